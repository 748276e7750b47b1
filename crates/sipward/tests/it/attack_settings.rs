//! Attacks on the settings side of issue 15: values at the edges of their ranges, and
//! settings that weaken a defence without `sipward audit` saying so. The operator (or
//! whoever can write the config) is the party here; the harm is a door opened quietly.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::harness::Env;

fn config_rules(audit: &Value) -> Vec<(String, String)> {
    audit["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["subject"] == "config")
        .map(|f| {
            (
                f["rule"].as_str().unwrap_or("").to_owned(),
                f["field"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn off_spelled_any_other_way_is_refused() {
    let env = Env::with_config("");
    for (field, value) in [
        ("[guard]\nflood_requests", "\"OFF\""),
        ("[guard]\nflood_requests", "\"Off\""),
        ("[guard]\nflood_requests", "\" off\""),
        ("[guard]\nflood_requests", "\"false\""),
        ("[guard]\nflood_requests", "false"),
        ("[guard]\nflood_requests", "\"0\""),
        ("[guard]\nflood_requests", "-1"),
        ("[guard]\nflood_requests", "0.5"),
        ("[guard]\nextension_failures", "\"disabled\""),
        ("[guard]\nextension_failures", "\"none\""),
        ("[guard]\nextension_failures", "-9223372036854775808"),
        ("[policy]\nmin_strength_score", "\"OFF\""),
        ("[policy]\nmin_strength_score", "-1"),
        ("[provisioning]\ngrace_secs", "\"off\""),
        ("[provisioning]\ngrace_secs", "-1"),
        ("[provisioning]\ngrace_secs", "9223372036854775807"),
        ("[guard]\nprovisioning_probes", "0"),
        ("[guard]\nprovisioning_probes", "\"off\""),
        ("[guard]\ntrusted_factor", "0"),
        ("[guard]\nban_secs", "-1"),
        ("[guard]\nban_secs", "0"),
    ] {
        let config = format!("{field} = {value}\n");
        std::fs::write(env.data.join("sipward.toml"), &config).expect("config");
        let err = env.fails(&["ext", "list"], 2);
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{config}: one sentence: {err}"
        );
    }
    // Control: the one spelling is taken (and is a finding).
    std::fs::write(
        env.data.join("sipward.toml"),
        "[guard]\nflood_requests = \"off\"\n",
    )
    .expect("config");
    env.ok(&["ext", "list"]);
    let audit = env.json(&["audit", "--json"]);
    assert!(
        config_rules(&audit)
            .iter()
            .any(|(r, _)| r == "config.flood_limits_off")
    );
}
