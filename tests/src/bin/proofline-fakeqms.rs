//! `proofline-fakeqms`: the fake central QMS (`proofline_tests::qms`) on loopback, set up as the
//! plant's QMS administrator would for the demo stations, for the demo and for trying the
//! hub's QMS delivery without a QMS.
//!
//!     proofline-fakeqms --hub-toml FILE [--faults]
//!
//! It makes a tenant `plant-1`, the hub's account (password in `FILE.qms-password`), a part
//! type, a Step and an Equipment row per demo station and a MeasurementDefinition per
//! characteristic, and appends the `[qms]` section mapping them to FILE. With `--faults` its
//! traps are on: FAIL reports are committed and then answered 500 (the task queue is down),
//! and every few seconds a write fails after committing, answers too late, or has its
//! connection cut mid-answer. It prints its address and stops on SIGINT or SIGTERM.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use proofline_tests::qms::{FakeQms, Faults};
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

/// A characteristic: name, unit, nominal, lower and upper tolerance (positive magnitudes).
type Definition = (&'static str, &'static str, f64, f64, f64);

/// The demo stations and the characteristics their devices report.
const STATIONS: [(&str, &[Definition]); 2] = [
    (
        "flow-bench-01",
        &[
            ("full_load_delivery", "mm3/stroke", 62.0, 1.86, 1.86),
            ("idle_delivery", "mm3/stroke", 4.1, 0.2, 0.2),
            ("pilot_delivery", "mm3/stroke", 1.5, 0.5, 0.5),
            ("back_leak", "mm3/stroke", 17.5, 17.5, 17.5),
            ("fluid_temperature", "degC", 40.0, 10.0, 10.0),
            ("test_pressure", "mbar", 500.0, 50.0, 50.0),
            ("seat_leak", "Pa", 15.0, 15.0, 15.0),
        ],
    ),
    (
        "torque-01",
        &[
            ("nozzle_nut_torque", "N.m", 40.0, 5.0, 5.0),
            ("nozzle_nut_angle", "deg", 180.0, 179.0, 179.0),
        ],
    ),
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut hub_toml: Option<PathBuf> = None;
    let mut faults = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--hub-toml" => hub_toml = args.next().map(PathBuf::from),
            "--faults" => faults = true,
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: proofline-fakeqms --hub-toml FILE [--faults]"
            ),
        }
    }
    let hub_toml = hub_toml.context("--hub-toml FILE is required")?;
    let fake = FakeQms::start().await?;
    let tenant = fake.set_tenants(&["plant-1"])[0].clone();
    let password = format!("demo-{:x}", std::process::id() as u64 * 2_654_435_761);
    fake.add_user("proofline-hub@plant.example", &password, &["plant-1"]);
    let pw_file = hub_toml.with_extension("qms-password");
    std::fs::write(&pw_file, format!("{password}\n"))?;
    let pt = fake.seed("PartTypes", &tenant, json!({"name": "CRI injector"}));
    let mut toml = format!(
        "\n[qms]\nbase_url = \"{}\"\nemail = \"proofline-hub@plant.example\"\npassword_file = \"{}\"\ntenant = \"plant-1\"\ntimeout_secs = 2\npart_type = \"{pt}\"\n",
        fake.base_url(),
        pw_file.display()
    );
    for (station, chars) in STATIONS {
        let step = fake.seed("Steps", &tenant, json!({"name": station, "part_type": pt}));
        let eq = fake.seed(
            "Equipment",
            &tenant,
            json!({"name": station, "status": "IN_SERVICE"}),
        );
        fake.seed(
            "CalibrationRecords",
            &tenant,
            json!({"equipment": eq, "calibration_date": "2026-06-01", "due_date": "2027-06-01", "result": "PASS"}),
        );
        toml.push_str(&format!(
            "[[qms.station]]\nagent_id = \"{station}\"\nstep = \"{step}\"\nequipment = \"{eq}\"\n[qms.station.measurements]\n"
        ));
        for (name, unit, nominal, lower, upper) in chars {
            let d = fake.seed(
                "MeasurementDefinitions",
                &tenant,
                json!({"label": name, "type": "NUMERIC", "step": step, "unit": unit,
                       "nominal": nominal, "lower_tol": lower, "upper_tol": upper}),
            );
            toml.push_str(&format!("{name} = \"{d}\"\n"));
        }
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(&hub_toml)
        .with_context(|| format!("opening {}", hub_toml.display()))?
        .write_all(toml.as_bytes())?;
    println!(
        "fake QMS at {} (tenant plant-1, faults {}): [qms] written to {}",
        fake.base_url(),
        if faults { "on" } else { "off" },
        hub_toml.display()
    );
    if faults {
        fake.set_faults(Faults {
            task_queue_down: true,
            ..Faults::default()
        });
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut n = 0u32;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick(), if faults => {
                n += 1;
                let mut f = fake.faults();
                match n % 3 {
                    0 => f.fail_after_commit = 1,
                    1 => { f.slow_writes = 1; f.slow_by = Duration::from_secs(3); }
                    _ => f.cut_writes = 1,
                }
                fake.set_faults(f);
            }
        }
    }
    Ok(())
}
