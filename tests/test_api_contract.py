"""The JSON API keeps its OpenAPI contract: schemathesis, in-process, every check on."""

from __future__ import annotations

import time

import schemathesis
from hypothesis import strategies as st
from schemathesis.engine import Status, from_schema
from schemathesis.engine import events as ev

SEED = 20


def test_api_contract(web_index, db):
    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    app = create_app(Settings(index_file=web_index, root_path=""))
    config = schemathesis.Config.from_dict({"seed": SEED, "generation": {"max-examples": 120, "deterministic": True}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    model = db.execute("SELECT model FROM models").fetchone()[0]
    sources = dict(db.execute("SELECT slug, n_units FROM sources").fetchall())
    n_seq = db.execute("SELECT count(*) FROM sequences").fetchone()[0]
    real = {
        "model": st.sampled_from([model]),
        "source": st.sampled_from(sorted(sources)),
        "index": st.sampled_from([0, 1, min(sources.values()) - 1]),
        "seq": st.sampled_from([0, n_seq - 1, n_seq]),
        "fmt": st.sampled_from(["jsonl", "parquet", "csv"]),
    }

    @schema.hook
    def before_generate_path_parameters(context, strategy):
        names = [p.name for p in context.operation.path_parameters]
        realistic = st.fixed_dictionaries({n: real[n] for n in names if n in real})
        return st.one_of(realistic, realistic, realistic, strategy)

    t0 = time.monotonic()
    failures, n_cases, errors = [], 0, []
    for event in from_schema(schema).execute():
        if isinstance(event, ev.ScenarioFinished):
            n_cases += len(event.recorder.cases)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        f = check.failure_info.failure
                        failures.append(f"{event.label} [{check.name}] {f.title}: {f.message[:300]}\n  {check.failure_info.code_sample}")
        elif isinstance(event, ev.NonFatalError):
            errors.append(f"{event.label}: {event.info.message}")
        elif isinstance(event, ev.FatalError):
            raise event.exception
    print(f"{n_cases} cases in {time.monotonic() - t0:.0f} s")
    uniq = sorted(set(failures))
    assert not uniq and not errors, "\n".join(uniq + errors)
