from controlplane.deploy import deployment_specs
from controlplane.settings import Settings


def test_nightly_follows_the_configured_cron():
    specs = {s.flow: s for s in deployment_specs(Settings(nightly_cron="30 3 * * *",
                                                          timezone="Europe/Paris"), "/tmp/s")}
    assert specs["nightly"].cron == "30 3 * * *"
    assert specs["verify"].cron == "30 4 * * *"
    assert specs["nightly"].timezone == "Europe/Paris"
    assert specs["nightly"].parameters == {"state_dir": "/tmp/s"}
    assert set(specs) == {"nightly", "verify", "quarterly_report"}


def test_every_spec_names_a_prefect_flow_that_takes_its_parameters():
    from prefect import Flow

    from controlplane import flows

    for spec in deployment_specs(Settings(), "/tmp/s"):
        flow = getattr(flows, spec.flow)
        assert isinstance(flow, Flow), spec.flow
        accepted = set(flow.parameters.properties)
        assert set(spec.parameters) <= accepted, (spec.flow, spec.parameters, accepted)
        assert flow.name.startswith("autopilot-"), flow.name
