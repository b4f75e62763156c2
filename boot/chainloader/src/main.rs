//! The chainloader image. All of it lives in the library; this binary only links it for the
//! aarch64 bare-metal target, where the library provides the entry point (see `make
//! chainloader`).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
use shootdown_chainloader as _;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the chainloader runs on aarch64 bare metal: build it with `make chainloader`");
    std::process::exit(2);
}
