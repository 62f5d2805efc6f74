//! End-to-end tests: real `shoal` processes on loopback ports, real HTTPS, real redb files.

mod api;
mod cli;
mod controllers;
mod durability;
mod harness;
mod kubectl;
mod layering;
mod networking;
mod node;
mod registry;
mod samples;
