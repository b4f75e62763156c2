//! The kernel image. All of the kernel lives in the `shootdown` library; this binary only links
//! it for the aarch64 bare-metal target, where the library provides the entry point.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
use shootdown as _;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the Shootdown kernel runs on aarch64 bare metal: build it with `make image`");
    std::process::exit(2);
}
