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
    std::process::exit(exit_code);
}
