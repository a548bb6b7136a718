//! MCP tool arguments as the server reads them (JSON to the tools' parameter types,
//! then the checks made before anything is created): an error or a request within
//! the profile's limits, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixcell::mcp::{EditParams, RunParams, check_run};
use std::sync::OnceLock;

fn ceiling() -> &'static nixcell::profile::Limits {
    static L: OnceLock<nixcell::profile::Limits> = OnceLock::new();
    L.get_or_init(|| nixcell::profile::load("default").unwrap().limits)
}

fuzz_target!(|data: &[u8]| {
    let Ok(args) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(p) = serde_json::from_value::<RunParams>(args.clone())
        && let Ok(checked) = check_run(&p, ceiling())
    {
        for (rel, _) in checked.files.iter().flatten() {
            assert!(rel.is_relative(), "{}", rel.display());
            assert!(
                rel.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
                "{}",
                rel.display()
            );
        }
        assert!(checked.limits.iter().any(|a| a == "--timeout"));
    }
    if let Ok(p) = serde_json::from_value::<EditParams>(args) {
        let op = serde_json::from_value::<nixcell::edit::Op>(serde_json::Value::String(
            serde_json::to_value(p.operation)
                .unwrap()
                .as_str()
                .unwrap()
                .replace('_', "-"),
        ))
        .unwrap();
        let _ = nixcell::edit::policy::check_name(op.subject(), &p.name);
    }
});
