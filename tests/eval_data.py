"""Tiny lm-eval task files in each task's own field layout (as the Hugging Face datasets hold them),
for tests that run tasks from local files without ../shared/data or a download."""

from __future__ import annotations

import json
from pathlib import Path

ROWS: dict[str, list[dict]] = {
    "lambada_openai": [
        {"text": "the cat sat on the mat and the dog sat on the mat"},
        {"text": "she opened the door and closed the door"},
        {"text": "one two three four five six"},
        {"text": "red green blue red green blue"},
        {"text": "the sun rose over the hills and the sun"},
    ],
    "piqa": [
        {"goal": "Dry wet hands.", "sol1": "Use a towel.", "sol2": "Use a bucket of water.", "label": 0},
        {"goal": "Open a jar.", "sol1": "Twist the lid off.", "sol2": "Paint the lid.", "label": 0},
        {"goal": "Cool soup.", "sol1": "Heat it.", "sol2": "Let it stand.", "label": 1},
        {"goal": "Light a room.", "sol1": "Turn on a lamp.", "sol2": "Close the blinds.", "label": 0},
    ],
    "arc_easy": [
        {
            "id": f"q{i}",
            "question": q,
            "choices": {"text": choices, "label": ["A", "B", "C"]},
            "answerKey": key,
        }
        for i, (q, choices, key) in enumerate(
            [
                ("Which is a liquid?", ["water", "rock", "wood"], "A"),
                ("What do plants need?", ["sand", "light", "noise"], "B"),
                ("Which is hot?", ["ice", "snow", "fire"], "C"),
            ]
        )
    ],
    "sciq": [
        {
            "question": "What gas do plants take in?",
            "distractor1": "oxygen",
            "distractor2": "helium",
            "distractor3": "neon",
            "correct_answer": "carbon dioxide",
            "support": "Plants take in carbon dioxide.",
        },
        {
            "question": "What is frozen water?",
            "distractor1": "steam",
            "distractor2": "sand",
            "distractor3": "salt",
            "correct_answer": "ice",
            "support": "",
        },
    ],
    "hellaswag": [  # Rowan/hellaswag: lm-eval's process_docs builds query/choices/gold from these
        {
            "ind": i,
            "activity_label": "Cooking",
            "ctx_a": "A man heats a pan [title] on the stove.",
            "ctx_b": "he",
            "ctx": "A man heats a pan on the stove. he",
            "endings": ["adds oil.", "sings a song.", "flies away.", "reads a book."],
            "source_id": f"x{i}",
            "split": "val",
            "split_type": "indomain",
            "label": str(i % 4),
        }
        for i in range(5)
    ],
    "winogrande": [  # allenai/winogrande (winogrande_xl)
        {
            "sentence": "The trophy does not fit in the suitcase because the _ is too big.",
            "option1": "trophy",
            "option2": "suitcase",
            "answer": "1",
        },
        {
            "sentence": "The ball broke the window because the _ was fragile.",
            "option1": "ball",
            "option2": "window",
            "answer": "2",
        },
        {
            "sentence": "Anna gave Maria a gift because _ was kind.",
            "option1": "Anna",
            "option2": "Maria",
            "answer": "1",
        },
    ],
    # generate_until tasks (generation workloads): lm-eval's nq_open, gsm8k, humaneval layouts and
    # this project's summarisation tasks in their hub datasets' columns.
    "nq_open": [
        {"question": "what is the capital of france", "answer": ["Paris"]},
        {"question": "who wrote hamlet", "answer": ["William Shakespeare", "Shakespeare"]},
        {"question": "how many legs does a spider have", "answer": ["eight", "8"]},
    ],
    "gsm8k": [
        {
            "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
            "answer": "3+4=7\n#### 7",
        },
        {"question": "A box holds 6 eggs. How many eggs are in 3 boxes?", "answer": "6*3=18\n#### 18"},
        {"question": "Sara had 10 pens and gave away 2. How many are left?", "answer": "10-2=8\n#### 8"},
    ],
    "humaneval": [
        {
            "task_id": "HumanEval/0",
            "prompt": 'def add(a, b):\n    """Return a + b."""\n',
            "canonical_solution": "    return a + b\n",
            "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
            "entry_point": "add",
        }
    ],
    "cnn_dm_layerskip": [
        {
            "id": "t0",
            "article": "The city council met on Monday. It voted to build a new bridge over the river.",
            "highlights": "Council votes for a new bridge .\nThe bridge will cross the river .",
        },
        {
            "id": "t1",
            "article": "A storm hit the coast overnight. Thousands of homes lost power.",
            "highlights": "Storm hits the coast .\nThousands lose power .",
        },
    ],
    "xsum_layerskip": [
        {
            "id": "x0",
            "document": "Rain fell across the north all day.",
            "summary": "Heavy rain hit the north.",
        },
        {
            "id": "x1",
            "document": "The team won the cup final on penalties.",
            "summary": "The team won the cup.",
        },
    ],
}
# Training splits: the few-shot examples of the few-shot tasks above (lm-eval draws them from train).
TRAIN_ROWS: dict[str, list[dict]] = {
    "gsm8k": [
        {"question": f"Ann has {i} cats and gets {i + 1} more. How many cats?", "answer": f"#### {2 * i + 1}"}
        for i in range(1, 8)
    ],
    "cnn_dm_layerskip": [
        {
            "id": f"tr{i}",
            "article": f"Training article number {i} about local news.",
            "highlights": f"Local news story {i} .\nSecond line {i} .",
        }
        for i in range(4)
    ],
}
# The split lm-eval 0.4 scores for each task (test where the task has one, else validation).
SCORED = {
    "lambada_openai": "test",
    "piqa": "validation",
    "arc_easy": "test",
    "sciq": "test",
    "hellaswag": "validation",
    "winogrande": "validation",
    "nq_open": "validation",
    "gsm8k": "test",
    "humaneval": "test",
    "cnn_dm_layerskip": "test",
    "xsum_layerskip": "test",
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_suite(folder: Path, tasks=tuple(ROWS), split: str | None = None) -> Path:
    """``folder/<task>_<split>.jsonl`` for each task (its scored split unless ``split`` is given)."""
    for task in tasks:
        write_jsonl(folder / f"{task}_{split or SCORED[task]}.jsonl", ROWS[task])
    return folder
