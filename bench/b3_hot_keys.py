"""B3 — hot keys: many changes over few contacts (Zipf 1.1) through the API while draining.

Each change writes the contact's own counter `v` (a custom field mapped to merge tag VER), so
the sandbox's request log (bodies recorded) shows, per member, the order of what was sent.
Figures: member-sends ÷ changes; ordering violations (a member receiving a lower VER after a
higher one); final state equal to the database.

    .venv/bin/python -m bench.b3_hot_keys --contacts 2000 --changes 50000 [--mappings 3]

`--mappings N`: the connection syncs N audiences (its own and N-1 more, rule "all"): every
change is owed to each; sends are counted over all of them, equality checked in each.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import defaultdict
from typing import Any

import httpx
import orjson

from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID
from bench import harness
from bench.b6_latency import service

WRITERS = 16


async def write_changes(
    base: str, token: str, ids: list[str], changes: int, seed: int
) -> tuple[dict[str, int], float]:
    """`changes` PATCHes over `ids` (Zipf 1.1), each contact's writes in order; final counters."""
    rng = random.Random(seed)
    weights = [1.0 / (k**1.1) for k in range(1, len(ids) + 1)]
    picks = rng.choices(range(len(ids)), weights=weights, k=changes)
    lanes: list[list[int]] = [[] for _ in range(WRITERS)]
    for p in picks:
        lanes[p % WRITERS].append(p)  # one lane per contact: its writes stay ordered
    counters: dict[str, int] = defaultdict(int)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as api:

        async def lane(items: list[int]) -> None:
            for p in items:
                cid = ids[p]
                counters[cid] += 1
                r = await api.patch(
                    f"/api/contacts/{cid}", json={"custom_fields": {"v": counters[cid]}}
                )
                r.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(lane(items) for items in lanes))
        elapsed = time.perf_counter() - start
    return dict(counters), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--changes", type=int, default=50_000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--mappings", type=int, default=1)
    args = parser.parse_args()
    with harness.scratch_database() as db_url, harness.sandbox_process() as sandbox:
        sandbox.configure(
            latency_ms=args.latency_ms, record_bodies=True, request_log_size=2_000_000
        )
        auth = ("bench", DEFAULT_API_KEY)
        lists = [DEFAULT_LIST_ID]
        account = httpx.get(f"{sandbox.url}/_control/accounts", timeout=30).json()["accounts"][0]
        for k in range(1, args.mappings):
            made = httpx.post(
                f"{sandbox.url}/_control/accounts/{account['id']}/lists",
                json={"name": f"Audience {k + 1}"},
                timeout=30,
            )
            made.raise_for_status()
            lists.append(made.json()["id"])
        for list_id in lists:
            httpx.post(
                f"{sandbox.url}/3.0/lists/{list_id}/merge-fields",
                json={"name": "Version", "tag": "VER", "type": "text"},
                auth=auth,
                timeout=30,
            ).raise_for_status()
        with service(db_url, sandbox.url, MAILCHIMP_MERGE_FIELD_MAP="v=VER") as (base, token):
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=base, headers=headers, timeout=60) as api:
                api.post(
                    "/api/integrations/mailchimp/api-key",
                    json={"api_key": DEFAULT_API_KEY, "audience_id": DEFAULT_LIST_ID},
                ).raise_for_status()
                for list_id in lists[1:]:
                    api.post(
                        "/api/integrations/mailchimp/audiences/mappings",
                        json={"audience_id": list_id, "rule": {"all": True}},
                    ).raise_for_status()
                ids = []
                for i in range(args.contacts):
                    r = api.post(
                        "/api/contacts",
                        json={
                            "email": f"hot{i}@example.com",
                            "newsletter_opt_in": True,
                            "custom_fields": {"v": 0},
                        },
                    )
                    r.raise_for_status()
                    ids.append(r.json()["id"])
                while api.get("/api/integrations/mailchimp").json()["pending"]:
                    time.sleep(0.5)
            httpx.delete(f"{sandbox.url}/_control/requests", timeout=30)
            counters, write_seconds = asyncio.run(
                write_changes(base, token, ids, args.changes, args.seed)
            )
            drain_start = time.perf_counter()
            with httpx.Client(base_url=base, headers=headers, timeout=60) as api:
                while api.get("/api/integrations/mailchimp").json()["pending"]:
                    time.sleep(0.25)
            tail_seconds = time.perf_counter() - drain_start
            log = sandbox.requests()["requests"]
        members_by_list = {
            list_id: httpx.get(
                f"{sandbox.url}/_control/lists/{list_id}/members", timeout=120
            ).json()["members"]
            for list_id in lists
        }

    email_of = {cid: f"hot{i}@example.com" for i, cid in enumerate(ids)}
    sends = 0
    calls = 0
    seen: dict[str, int] = {}
    violations = 0
    for entry in sorted(log, key=lambda e: e["start"]):
        body = entry.get("body")
        if entry["status"] != 200 or not body or entry["method"] not in ("PUT", "POST"):
            continue
        data = orjson.loads(body)
        items = data.get("members") if isinstance(data.get("members"), list) else [data]
        got = False
        for item in items:
            ver = (item.get("merge_fields") or {}).get("VER")
            if ver is None:
                continue
            got = True
            sends += 1
            # Per audience: each mapping's member has its own order.
            email = entry["path"].split("/")[3] + ":" + item["email_address"].lower()
            if int(ver) < seen.get(email, -1):
                violations += 1
            seen[email] = max(seen.get(email, -1), int(ver))
        calls += got
    equal = 0
    for members in members_by_list.values():
        remote = {
            m["email_address"].lower(): m["merge_fields"].get("VER")
            for m in members
            if "email_address" in m
        }
        equal += sum(
            1
            for cid, email in email_of.items()
            if str(remote.get(email)) == str(counters.get(cid, 0))
        )
    result: dict[str, Any] = {
        "contacts": args.contacts,
        "changes": args.changes,
        "latency_ms": args.latency_ms,
        "write_seconds": write_seconds,
        "changes_per_s": args.changes / write_seconds,
        "tail_seconds_after_writes": tail_seconds,
        "member_sends": sends,
        "write_calls": calls,
        "sends_per_change": sends / args.changes,
        "ordering_violations": violations,
        "final_equal_pct": 100.0 * equal / (len(email_of) * len(lists)),
        "mappings": len(lists),
        # Requests in flight at the sandbox on average while it was busy, and their duration.
        "wire": harness.wire_figures([e for e in log if e["method"] != "GET"]),
    }
    print(
        f"B3 {args.changes} changes over {args.contacts} contacts at {result['changes_per_s']:.0f}/s:"
        f" sends/changes {result['sends_per_change']:.3f} (bar 0.2), ordering violations {violations} (bar 0),"
        f" final state equal {result['final_equal_pct']:.1f}% (bar 100)",
        flush=True,
    )
    print(f"results: {harness.write_result('b3_hot_keys', result)}")


if __name__ == "__main__":
    main()
