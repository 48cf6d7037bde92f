//! Dependencies between the workspace crates point one way:
//! sqllogictest → server → sql → engine → storage. This test reads `cargo metadata` and fails
//! on any other edge, so the layering stays true without anyone remembering it.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::process::Command;

/// Each crate and the workspace crates it may depend on (normal, build or dev).
const ALLOWED: &[(&str, &[&str])] = &[
    ("sluice-storage", &[]),
    ("sluice-engine", &["sluice-storage"]),
    ("sluice-history", &["sluice-engine", "sluice-storage"]),
    ("sluice-connectors", &["sluice-engine"]),
    ("sluice-sql", &["sluice-connectors", "sluice-history", "sluice-engine", "sluice-storage"]),
    ("sluice-server", &["sluice-sql", "sluice-connectors", "sluice-history", "sluice-engine", "sluice-storage"]),
    ("sluice-sqllogictest", &["sluice-server", "sluice-sql"]),
];

#[test]
fn workspace_dependencies_point_one_way() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let members: BTreeSet<&str> = packages.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(members, ALLOWED.iter().map(|(n, _)| *n).collect(), "a crate was added or renamed: update ALLOWED");
    for package in packages {
        let name = package["name"].as_str().unwrap();
        let allowed = ALLOWED.iter().find(|(n, _)| *n == name).unwrap().1;
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            if members.contains(dep_name) {
                assert!(allowed.contains(&dep_name), "forbidden dependency edge {name} → {dep_name}");
            }
        }
    }
}
