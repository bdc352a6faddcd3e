"""dumps_readable: indented JSON whose lists of numbers (pass-trace rows) stay on one line."""

from __future__ import annotations

import json
import math

from earlyexit.measure.json_text import dumps_readable


def test_reads_back_equal_with_number_lists_on_one_line():
    value = {
        "segments": [[8, 1, 0, 33, 0, 8, 8, 8], [2, 5, 1, 40, 3, 0, 2, 2]],
        "floats": [1.5, -2e-05, 3e38, None, True, False],
        "mixed": [1, "two"],
        "text": "a [\n 1,\n 2\n] inside a string",
        "empty": [],
        "nested": {"deep": {"rows": [1, 2, 3]}},
    }
    text = dumps_readable(value)
    assert json.loads(text) == value
    lines = text.splitlines()
    assert "    [8, 1, 0, 33, 0, 8, 8, 8]," in lines and "    [2, 5, 1, 40, 3, 0, 2, 2]" in lines
    assert '  "floats": [1.5, -2e-05, 3e+38, null, true, false],' in lines
    assert '      "rows": [1, 2, 3]' in lines
    assert '    "two"' in lines  # a list holding a string keeps one element per line
    # each list of n numbers: n + 2 lines -> 1 (two rows of 8, six floats, three ints)
    assert len(lines) == len(json.dumps(value, indent=2).splitlines()) - (2 * 9 + 7 + 4)


def test_non_finite_numbers_as_json_module_writes_them():
    text = dumps_readable({"x": [math.nan, -math.inf, math.inf]})
    assert '"x": [NaN, -Infinity, Infinity]' in text
    back = json.loads(text)["x"]
    assert math.isnan(back[0]) and back[1:] == [-math.inf, math.inf]


def test_a_trace_shaped_record_shrinks_to_a_line_per_row():
    record = {"modes": {"full": {"trace": {"segments": [[8, 1, 0, k, 0, 8, 8, 8] for k in range(33, 97)]}}}}
    text = dumps_readable(record)
    assert json.loads(text) == record
    assert len(text.splitlines()) == 5 + 64 + 5  # a line per row, five to open and five to close
