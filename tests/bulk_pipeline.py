"""Pipeline of the volume tests: intake -> check -> publish, the path chosen by each item's kind.

- ``hold``: intake asks for review ("Hold: check the intake").
- ``fine`` / ``odd``: check asks for review ("Looks fine" / "Suspicious: look closely").
- ``slow``: check fails with "upstream timeout"; ``oops``: check fails with "bad format".
"""

from treadle import Pipeline, Review, Runner, open_store, stage


@stage()
def intake(item):
    if item["kind"] == "hold":
        return Review({"id": item["id"]}, message="Hold: check the intake")
    return {"ok": True}


@stage(after=[intake])
def check(item, ctx):
    if item["kind"] == "slow":
        raise RuntimeError(f"Upstream TIMEOUT after 30 s for {item['id']}")
    if item["kind"] == "oops":
        raise ValueError("bad format")
    message = "Looks fine" if item["kind"] == "fine" else "Suspicious: look closely"
    return Review({"id": item["id"], "kind": item["kind"]}, message=message)


@stage(after=[check])
def publish(item, ctx):
    return ctx.outputs["check"]


pipeline = Pipeline("volume", [intake, check, publish])


def seed(url, workers=8, **kinds):
    """A runner on ``url`` that submitted ``count`` items of each kind (ids
    ``kind-0000`` ...) and ran them."""
    runner = Runner(pipeline, open_store(url), workers=workers)
    runner.submit(*[{"id": f"{kind}-{n:04d}", "kind": kind}
                    for kind, count in kinds.items() for n in range(count)])
    runner.run()
    return runner
