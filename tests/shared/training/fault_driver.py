"""Runs `mldm train` many times cheaply for the fault suite: imported once, each run in a forked child.

    python fault_driver.py PLAN.json   (a list of {"argv": [...], "fault": "<point>:<n>" | null, "log": path})

prints one JSON line: each run's outcome, "exit <code>" or "signal <number>". The driver itself starts no
threads, so forking it is safe; each child uses one intra-op thread (as a DataLoader worker would).
"""
import json
import os
import sys

import torch
import torch.utils.tensorboard  # noqa: F401 (imported once here rather than in every child)

import shared.training.run  # noqa: F401
from shared.cli.main import main


def run_child(argv, fault, log):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            if fault:
                os.environ["MLDM_FAULT"] = fault
            with open(log, "w") as stderr:
                os.dup2(stderr.fileno(), 2)
                code = main(argv)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"


if __name__ == "__main__":
    with open(sys.argv[1]) as plan_file:
        plan = json.load(plan_file)
    print(json.dumps([run_child(run["argv"], run.get("fault"), run["log"]) for run in plan]))
