"""A durable coordinator -> planner -> executor run on a local redb file.

``python examples/demo.py [STORE]`` (after ``maturin develop -m bindings/Cargo.toml``)
runs two processes one after the other, as an operator would see them:

1. the first looks up prices with a host tool, stores a product set as a reference
   (with a glimpse), has the planner store a typed price-change plan that references
   it, and has the executor ask to execute the plan; the plan needs approval, and the
   process exits at the gate without closing anything, as a crashed process would;
2. the second opens the same file, finds the suspended run and its pending approval,
   approves it, resumes the run (nothing recorded is called again), prints what the
   action dispatcher received, and prints the ``flowai show`` summary of the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from flowai_harness import (
    _internal,
    create_runtime,
    define_coordinator,
    define_executor,
    define_plan,
    define_planner,
    define_reference,
    define_runtime,
    define_tenant,
    define_tool,
    glimpse,
)
from flowai_harness.context import DispatchContext, ToolContext

# --------------------------------------------------------------------------- the spec


class ProductSet(BaseModel):
    skus: list[str]


class ReferenceHandle(BaseModel):
    kind: str
    id: str


class PriceChange(BaseModel):
    kind: Literal["price_change"] = "price_change"
    sku: str
    new_price: float
    references: list[ReferenceHandle] = []


class PricePlan(BaseModel):
    actions: list[PriceChange]
    rationale: str


PRODUCTS = define_reference("ProductSet", ProductSet, ttl_ms=86_400_000, glimpse=lambda value: glimpse(value.skus))
PRICE_PLAN = define_plan("PricePlan", PricePlan, display_aliases={"draft": "pending_approval"})
PRICES = {"sku-1": 12.5, "sku-2": 8.0}


@define_tool("lookup_prices", {"skus": list[str]}, description="Look up current prices.")
def lookup_prices(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    print(f"  [host] lookup_prices {args['skus']} (attempt {ctx.attempt})")
    return {"prices": {sku: PRICES[sku] for sku in args["skus"]}, "displaySummary": f"{len(args['skus'])} prices found"}


DISPATCHED: list[list[dict[str, Any]]] = []


async def dispatch(actions: list[dict[str, Any]], ctx: DispatchContext) -> dict[str, Any]:
    print(f"  [host] dispatching {len(actions)} action(s) of plan {ctx.plan_id}, idempotency key {ctx.idempotency_key}")
    print(f"  [host] with references {json.dumps(ctx['resolved_refs'])}")
    DISPATCHED.append(actions)
    return {"entitiesAffected": len(actions), "summary": f"{len(actions)} prices changed"}


SPEC = define_runtime(
    define_tenant("acme", "2026-11-25"),
    agents=[
        define_coordinator(
            "coordinator",
            model="claude-sonnet-4-6",
            prompt="You coordinate pricing work.",
            routes=["planner", "executor"],
            tools=[lookup_prices],
        ),
        define_planner("planner", model="claude-sonnet-4-6", prompt="You produce typed price plans.", plan=PRICE_PLAN),
        define_executor("executor", model="claude-sonnet-4-6", prompt="You execute approved plans.", plan=PRICE_PLAN),
    ],
    references=[PRODUCTS],
    approval_policies={"plans": "always", "tools": "never"},
    providers={"anthropic": {"apiKey": "unused"}},
)


def runtime(store: str) -> Any:
    return create_runtime(SPEC, interpreter="scripted", store=store, action_dispatcher=dispatch)


def print_event(event: dict[str, Any]) -> None:
    kind = event["type"]
    detail = ""
    if kind == "tool-agent":
        detail = f"{event['agentName']} {event['state']}"
    elif kind == "tool-invocation":
        detail = f"{event['toolName']} {event['state']}"
    elif kind == "text":
        text = event["text"]
        detail = text if len(text) <= 72 else text[:72] + "…"
    elif kind in {"approval-required", "approval-decision"}:
        detail = event["data"]["id"]
    elif kind == "plan-status-change":
        detail = f"{event['data']['from']} -> {event['data']['to']}"
    elif kind == "error":
        detail = event["error"]["message"]
    print(f"  {kind:<20} {detail}")


# --------------------------------------------------------------------------- the two processes


async def start(path: str) -> None:
    rt = runtime(path)
    ref = await rt.create_reference(PRODUCTS, ProductSet(skus=["sku-1", "sku-2"]))
    print(f"process 1: reference {ref['kind']}/{ref['id']} glimpse {json.dumps(ref['glimpse'])}")
    handle = ReferenceHandle(kind=ref["kind"], id=ref["id"])
    plan = PricePlan(
        actions=[
            PriceChange(sku="sku-1", new_price=11.99, references=[handle]),
            PriceChange(sku="sku-2", new_price=7.49),
        ],
        rationale="match competitor prices",
    )
    planner = {"tool": "storePlan", "args": {"specName": "PricePlan", "planId": "price-plan-1", "body": plan.model_dump(mode="json")}}
    executor = {"tool": "executePlan", "args": {"planId": "price-plan-1"}}
    script = {
        "script": [
            {"tool": "lookup_prices", "args": {"skus": ["sku-1", "sku-2"]}},
            {"tool": "call_agent", "args": {"agent": "planner", "prompt": json.dumps(planner)}},
            {"tool": "call_agent", "args": {"agent": "executor", "prompt": json.dumps(executor)}},
        ]
    }
    stream = rt.query(json.dumps(script), "pricing-thread")
    print(f"process 1: run {stream.run_id}")
    async for event in stream:
        print_event(event)
        if event["type"] == "approval-required":
            print(f"process 1: waiting for approval {event['data']['id']} — exiting without closing, like a crash")
            sys.stdout.flush()
            os._exit(0)
    raise SystemExit("the run ended without asking for approval")


async def approve(path: str) -> None:
    rt = runtime(path)
    suspended = rt.runs(status="suspended", limit=10)
    if not suspended or not suspended[0]["pendingApprovals"]:
        raise SystemExit("no suspended run with a pending approval in the store")
    run = suspended[0]
    run_id, approval_id = run["runId"], run["pendingApprovals"][0]
    print(f"process 2: run {run_id} is {run['status']}; approving {approval_id}")
    await rt.respond_to_approval(approval_id, "approve")
    async for event in rt.resume(run_id):
        print_event(event)
    print(f"process 2: dispatched {json.dumps(DISPATCHED)}")
    info = rt.run(run_id)
    print(f"summary: run {run_id} {info['status']} — {info['records']} records, agent {info['agent']}, thread {info['threadId']}")
    for entry in rt.journal(run_id):
        if entry["kind"] == "PlanTransitioned":
            print(f"  plan {entry['data']['planId']}: {entry['data']['from']} -> {entry['data']['to']}")
    rt.close()  # lets go of the file, so that the read-only `flowai show` may open it
    cli_main = getattr(_internal, "cli_main", None)
    if cli_main is not None:
        print(f"$ flowai show {path} {run_id}")
        sys.stdout.flush()
        code = cli_main(["show", path, run_id])
        if code != 0:
            raise SystemExit(code)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--phase=start"]:
        asyncio.run(start(argv[1]))
        return 0
    if argv[:1] == ["--phase=approve"]:
        asyncio.run(approve(argv[1]))
        return 0
    path = Path(argv[0] if argv else "demo.redb")
    path.unlink(missing_ok=True)
    Path(f"{path}-wal").unlink(missing_ok=True)
    for phase in ("--phase=start", "--phase=approve"):
        result = subprocess.run([sys.executable, __file__, phase, str(path)], check=False)
        if result.returncode != 0:
            print(f"{phase} exited with {result.returncode}", file=sys.stderr)
            return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
