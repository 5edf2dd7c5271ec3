"""Write arith-alpaca.jsonl: small arithmetic word problems in Alpaca format (deterministic).

Run: python examples/data/make_arith.py
"""

import json
import random
from pathlib import Path

ITEMS = ["apples", "pencils", "marbles", "books", "cookies", "stamps", "shells", "tickets"]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana"]


def problem(rng: random.Random) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(5, 60), rng.randint(2, 30), rng.randint(2, 6)
    kind = rng.choice(["gain", "loss", "groups"])
    if kind == "gain":
        question = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"
        answer, work = a + b, f"{a} + {b} = {a + b}"
    elif kind == "loss":
        a = a + b
        question = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        answer, work = a - b, f"{a} - {b} = {a - b}"
    else:
        question = f"{name} packs {c} boxes with {b} {item} each. How many {item} are packed?"
        answer, work = b * c, f"{c} * {b} = {b * c}"
    return {
        "instruction": "Solve the word problem. End with '#### ' and the number.",
        "input": question,
        "output": f"{work}\n#### {answer}",
    }


def main() -> None:
    rng = random.Random(2026)
    path = Path(__file__).with_name("arith-alpaca.jsonl")
    with open(path, "w") as handle:
        for _ in range(200):
            handle.write(json.dumps(problem(rng)) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
