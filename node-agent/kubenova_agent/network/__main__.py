"""``python -m kubenova_agent.network apply|teardown`` converges this host (the network
namespace the command runs in) to the plans in a JSON file: ``{"host": HostConfig,
"plans": [NetworkPlan, ...]}``; ``teardown`` removes every kubenova network. What the agent
does in-process, as a command an operator (or a test) can run and read."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import pydantic

from kubenova_agent.network import host, types


class Desired(pydantic.BaseModel):
    host: types.HostConfig
    plans: list[types.NetworkPlan] = []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubenova_agent.network")
    parser.add_argument("action", choices=["apply", "teardown"])
    parser.add_argument("file", type=pathlib.Path, help="the JSON file of the host and plans")
    args = parser.parse_args(argv)
    desired = Desired.model_validate_json(args.file.read_text())
    plans = desired.plans if args.action == "apply" else []
    report = host.apply(desired.host, plans)
    json.dump({"changes": report.changes}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
