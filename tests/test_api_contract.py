"""The JSON API keeps its OpenAPI contract, proved by schemathesis (issue 20).

Its engine runs in-process, as `schemathesis run --checks all` does over HTTP: every
phase (examples, coverage, fuzzing, stateful) and every check (no server error,
responses and statuses as documented, schema-valid input accepted, schema-violating
input refused, ...), over the app built on the test index. Path parameters are mostly
real (the index's model, sources, units and sequences, and one past the last), so the
checks reach past the 404s. A fixed seed and deterministic generation make every run
the same cases; the example budget keeps it near a minute here.

(The engine, not the pytest plugin: the plugin's fixture-built schemas break on
pytest 9.2, which renamed the node attribute they set.)
"""

from __future__ import annotations

import time

import schemathesis
from hypothesis import strategies as st
from schemathesis.engine import Status, events, from_schema

SEED = 20
EXPLAIN_PATH = "/api/{model}/{source}/{index}/explain"
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis' default for valid data
MAX_EXAMPLES = 80  # per operation, fuzzing phase: ~2,000 cases in ~60-80 s on the shared 2-core machine


def _schema(app, db):
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            # Explain needs seq and pos, or text (one of them, not both): parameters can
            # not say "one of" in OpenAPI, so a request naming neither (or both) passes
            # the schema and is refused with a 422, as the route documents.
            "operations": [
                {
                    "include-path": EXPLAIN_PATH,
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}},
                }
            ],
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    (model,) = db.execute("SELECT model FROM models").fetchone()
    sources = dict(db.execute("SELECT slug, n_units FROM sources").fetchall())
    (n_seq,) = db.execute("SELECT count(*) FROM sequences").fetchone()
    n_units = min(sources.values())
    real = {
        "model": st.just(model),
        "source": st.sampled_from(sorted(sources)),
        "index": st.sampled_from([0, 1, n_units - 1, max(sources.values())]),
        "seq": st.sampled_from([0, n_seq - 1, n_seq]),
        "fmt": st.sampled_from(["jsonl", "parquet", "csv"]),
    }

    @schema.hook
    def before_generate_path_parameters(context, strategy):
        names = [p.name for p in context.operation.path_parameters]
        realistic = st.fixed_dictionaries({n: real[n] for n in names})
        # Mostly real values; the schema's own strategy keeps arbitrary ones in the mix.
        return st.one_of(realistic, realistic, realistic, strategy)

    return schema


def test_api_contract(web_index, db):
    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    schema = _schema(create_app(Settings(index_file=web_index, root_path="")), db)
    started = time.monotonic()
    failures: set[str] = set()
    errors: list[str] = []
    n_cases = 0
    operations: set[str] = set()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            n_cases += len(event.recorder.cases)
            operations.update(node.value.operation.label for node in event.recorder.cases.values())
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        f = check.failure_info.failure
                        failures.add(
                            f"{f.operation} [{check.name}] {f.title}: {f.message[:400]}\n  {check.failure_info.code_sample}"
                        )
        elif isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    print(f"schemathesis: {n_cases} cases over {len(operations)} operations in {time.monotonic() - started:.0f} s")
    assert not failures and not errors, "\n".join(sorted(failures) + errors)
    # It ran: every operation of the API, and many cases.
    assert len(operations) == sum(len(ops) for ops in schema.raw_schema["paths"].values()) == 16
    assert n_cases > 1000
