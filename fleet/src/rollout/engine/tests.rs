use outpost_common::protocol::{AgentState, ModelRef, SCHEMA, ServedModel, Status};

fn status(state: AgentState, models: Vec<ServedModel>) -> Status {
    Status {
        schema: SCHEMA,
        state,
        at: time::OffsetDateTime::UNIX_EPOCH,
        agent_version: "test".into(),
        family: "cpu".into(),
        model: Some(ModelRef { name: "defect".into(), version: 1 }),
        models,
        health: None,
    }
}

#[test]
fn offline_statuses_say_nothing_about_versions_to_a_running_rollout() {
    let serving = |active, committed| ServedModel { name: "defect".into(), active, committed, previous: None };
    // What a running agent on v2 says.
    let running = status(AgentState::Running, vec![serving(2, true)]);
    assert_eq!(super::served(&running, "defect", false), Some((2, true)));
    assert_eq!(super::served(&running, "other", false), None);
    // What it says when it stops cleanly: the configured model only, which is not what it runs; its last will
    // is the status it had when it connected. A rollout ignores both; creation reads them.
    let stopped = status(AgentState::Offline, Vec::new());
    assert_eq!(super::served(&stopped, "defect", false), None);
    assert_eq!(super::served(&stopped, "defect", true), Some((1, true)));
    let will = status(AgentState::Offline, vec![serving(1, true)]);
    assert_eq!(super::served(&will, "defect", false), None);
    // An old agent reports only `model`.
    let old = status(AgentState::Running, Vec::new());
    assert_eq!(super::served(&old, "defect", false), Some((1, true)));
}
