//! worker: a command. Prints `worker: step i` for i in 1..=$STEPS (default 3), then
//! `worker: done`, and exits with $EXIT_CODE (default 0). Built as a wasi:cli component and as a
//! WASI preview 1 core module.

fn main() {
    let steps: u32 = std::env::var("STEPS").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(3);
    let exit_code: i32 = std::env::var("EXIT_CODE").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    for step in 1..=steps {
        println!("worker: step {step}");
    }
    println!("worker: done");
    exit(exit_code);
}

#[cfg(all(target_os = "wasi", target_env = "p2"))]
fn exit(code: i32) {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    if code == 0 {
        std::process::exit(0);
    }
    // std's exit on WASI 0.2 maps every failure to 1; say the exact code.
    wasip2::cli::exit::exit_with_code(code.clamp(1, 255) as u8);
}

#[cfg(not(all(target_os = "wasi", target_env = "p2")))]
fn exit(code: i32) {
    std::process::exit(code);
}
