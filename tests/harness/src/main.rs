//! `harness`: boots Shootdown under QEMU (or reads a board's serial port), parses its KTAP
//! output and reports. See `harness help`.

fn main() {
    let status = shootdown_harness::app::main(std::env::args().skip(1).collect());
    shootdown_harness::app::flush();
    std::process::exit(status);
}
