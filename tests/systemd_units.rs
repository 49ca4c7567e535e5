//! The packaged units are sandboxed as systemd itself judges it: `systemd-analyze security`
//! rates both OK (an exposure of at most 4.0 out of 10).

use std::process::Command;

fn exposure(unit: &str) -> f64 {
    let path = format!("{}/systemd/{unit}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager", &path])
        .output()
        .expect("systemd-analyze (apt-get install systemd; scripts/setup-debian.sh test does)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| {
            let rest = l.split("Overall exposure level for ").nth(1)?;
            rest.split(": ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure level for {unit} in:\n{text}"))
}

#[test]
fn both_units_are_rated_ok_by_systemd() {
    for unit in ["campeer.service", "campeer-serve.service"] {
        let level = exposure(unit);
        eprintln!("{unit}: exposure {level}");
        assert!(
            level <= 4.0,
            "{unit}: exposure {level} (above 4.0 is not OK)"
        );
    }
}
