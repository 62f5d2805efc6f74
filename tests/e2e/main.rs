//! End-to-end tests: real `shoal` processes on loopback ports, real HTTPS, real redb files.

mod api;
mod cli;
mod containers;
mod controllers;
mod durability;
mod ha;
mod harness;
mod kubectl;
mod layering;
mod linearizable;
mod networking;
mod node;
mod registry;
mod samples;
