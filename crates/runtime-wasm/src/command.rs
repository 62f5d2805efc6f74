//! Command workloads: components exporting `wasi:cli/run` and WASI preview 1 modules with
//! `_start`, run to completion (or as long-lived processes) with the pod's sandbox.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Module, Store};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::http::describe_trap;
use crate::sandbox::{ComponentState, SandboxSpec, apply_time_budget};
use crate::{EpochClock, Error, Result, Workload};

/// A `wasi:cli/run` component, linked.
pub struct PreparedCommand {
    pre: CommandPre<ComponentState>,
    clock: Arc<EpochClock>,
}

impl PreparedCommand {
    pub(crate) fn new(engine: &Engine, component: &Component, clock: &Arc<EpochClock>) -> Result<Option<Self>> {
        let runs = component.component_type().exports(engine).any(|(name, _)| name.starts_with("wasi:cli/run@0.2"));
        if !runs {
            return Ok(None);
        }
        let mut linker = Linker::<ComponentState>::new(engine);
        crate::sandbox::add_wasi_to_linker(&mut linker)?;
        // Commands may make outgoing HTTP requests too.
        crate::outgoing::add_to_linker(&mut linker).map_err(|e| Error::Engine(e.to_string()))?;
        let instance_pre = linker.instantiate_pre(component).map_err(|e| Error::Link(format!("{e:#}")))?;
        let pre = CommandPre::new(instance_pre).map_err(|e| Error::Link(format!("{e:#}")))?;
        Ok(Some(Self { pre, clock: Arc::clone(clock) }))
    }
}

struct ModuleState {
    wasi: WasiP1Ctx,
    limits: crate::usage::Limits,
}

/// A preview 1 core module with `_start`, linked.
pub struct PreparedModule {
    pre: wasmtime::InstancePre<ModuleState>,
    clock: Arc<EpochClock>,
}

impl PreparedModule {
    pub(crate) fn new(engine: &Engine, module: &Module, clock: &Arc<EpochClock>) -> Result<Self> {
        if !module.exports().any(|e| e.name() == "_start") {
            return Err(Error::NotRunnable);
        }
        let mut linker = wasmtime::Linker::<ModuleState>::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state| &mut state.wasi).map_err(|e| Error::Engine(e.to_string()))?;
        let pre = linker.instantiate_pre(module).map_err(|e| Error::Link(format!("{e:#}")))?;
        Ok(Self { pre, clock: Arc::clone(clock) })
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    pub exit_code: i32,
    /// Kubernetes' terminated reason: `Completed`, `Error`, or what stopped it.
    pub reason: String,
    pub message: Option<String>,
}

impl CommandOutcome {
    fn exited(code: i32) -> Self {
        Self { exit_code: code, reason: if code == 0 { "Completed".into() } else { "Error".into() }, message: None }
    }

    fn failed(error: &wasmtime::Error) -> Self {
        if let Some(exit) = error.downcast_ref::<I32Exit>() {
            return Self::exited(exit.0);
        }
        let reason = match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => "DeadlineExceeded",
            Some(wasmtime::Trap::OutOfFuel) => "DeadlineExceeded",
            _ => "Error",
        };
        // 128 + SIGKILL is what Kubernetes shows for a killed process; a trap is our analogue.
        Self { exit_code: 137, reason: reason.into(), message: Some(describe_trap(error)) }
    }
}

/// Runs a command workload to completion within `spec.time_budget` (use a long budget for
/// long-running processes). Output goes to `spec.logs`.
pub async fn run_command(workload: &Workload, spec: &SandboxSpec) -> Result<CommandOutcome> {
    let budget = spec.time_budget;
    let outcome = match workload {
        Workload::Command(prepared) => {
            let _running = prepared.clock.running();
            let mut store = Store::new(prepared.pre.engine(), ComponentState::new(spec)?);
            store.limiter(|state| &mut state.limits);
            let charged = apply_time_budget(&mut store, budget, spec.cpu.clone());
            let run = crate::usage::Metered::new(
                Box::pin(async {
                    let command = prepared.pre.instantiate_async(&mut store).await?;
                    command.wasi_cli_run().call_run(&mut store).await
                }),
                std::sync::Arc::clone(&spec.usage),
                charged,
            );
            match with_budget(budget, run).await {
                Ok(Ok(())) => CommandOutcome::exited(0),
                // wasi:cli/run returned its error variant: exit status 1.
                Ok(Err(())) => CommandOutcome::exited(1),
                Err(error) => CommandOutcome::failed(&error),
            }
        }
        Workload::Preview1(prepared) => {
            let _running = prepared.clock.running();
            let wasi = spec.wasi_builder()?.build_p1();
            let mut store = Store::new(prepared.pre.module().engine(), ModuleState { wasi, limits: spec.limits() });
            store.limiter(|state| &mut state.limits);
            let charged = apply_time_budget(&mut store, budget, spec.cpu.clone());
            let run = crate::usage::Metered::new(
                Box::pin(async {
                    let instance = prepared.pre.instantiate_async(&mut store).await?;
                    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                    start.call_async(&mut store, ()).await
                }),
                std::sync::Arc::clone(&spec.usage),
                charged,
            );
            match with_budget(budget, run).await {
                Ok(()) => CommandOutcome::exited(0),
                Err(error) => CommandOutcome::failed(&error),
            }
        }
        Workload::Http(_) => return Err(Error::Sandbox("an HTTP component is served, not run as a command".into())),
    };
    spec.logs.flush();
    Ok(outcome)
}

/// Bounds a run that may also wait in host calls (where epochs cannot reach it).
async fn with_budget<T>(budget: Duration, run: impl std::future::Future<Output = wasmtime::Result<T>>) -> wasmtime::Result<T> {
    match tokio::time::timeout(budget + Duration::from_millis(50), run).await {
        Ok(result) => result,
        Err(_) => Err(wasmtime::Trap::Interrupt.into()),
    }
}
