//! The builder service: keeps self-hosted things at their newest release. For each target it
//! polls a GitHub-compatible releases API, picks the newest matching release, and builds it:
//! download the asset, unpack it into a volume and switch the volume's `current` link, run a
//! command, restart a Kubernetes Deployment.
//!
//! Parts, by role: [`config`] (the `[builder]` section), [`releases`] (the API client),
//! [`select`] (which release is the candidate), [`state`] (stored state and the polling
//! decision), [`build`] (the steps, with [`download`], [`unpack`], [`volume`], [`command`]
//! and [`kube`]), [`runner`] (one build at a time per target), [`poll`] (one target's
//! polling), [`messages`] (events and notices) and [`service`] (the actor).

pub mod build;
pub mod command;
pub mod config;
pub mod download;
pub mod kube;
pub mod messages;
pub mod poll;
pub mod releases;
pub mod runner;
pub mod select;
pub mod service;
pub mod state;
pub mod unpack;
pub mod volume;

pub use service::{Builder, NAME};
