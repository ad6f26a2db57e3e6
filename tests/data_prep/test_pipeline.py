"""data_prep: accounting, every filter, dedup determinism, re-runs, malformed rows, recipe errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_prep.pipeline import prepare
from data_prep.recipe import load_data_recipe
from sft.errors import UserError
from tests.data_prep_fixtures import (
    chat,
    read_kept,
    read_split,
    tiny_tokens,
    write_jsonl,
    write_recipe,
    write_smoltalk_dir,
    write_tiny_tokenizer,
    write_tulu_dir,
)


def tulu_rows(n: int, prefix: str = "t") -> list[dict]:
    return [
        {
            "id": f"{prefix}{i}",
            "messages": chat(f"hello {prefix} question {i}", f"answer {i}"),
            "source": "oasst" if i % 2 else "no_robots",
        }
        for i in range(n)
    ]


def smol_rows(n: int) -> list[dict]:
    return [
        {
            "messages": chat(f"smol ask {i}", f"smol reply {i}", system="be brief"),
            "source": "smol-magpie-ultra",
        }
        for i in range(n)
    ]


def run(tmp_path: Path, sources: list[dict], name: str = "out", overrides=(), **extra) -> dict:
    recipe = write_recipe(tmp_path / f"{name}.yaml", sources, tmp_path / name, **extra)
    return prepare(str(recipe), list(overrides), progress=False)


def test_both_layouts_accounting_and_unchanged_content(tmp_path):
    tulu = tulu_rows(30)
    smol = smol_rows(25)
    write_tulu_dir(tmp_path / "tulu", tulu, shards=3)
    write_smoltalk_dir(tmp_path / "smol", smol, test_rows=smol_rows(5)[:1])
    stats = run(
        tmp_path,
        [
            {"name": "tulu3", "path": str(tmp_path / "tulu")},
            {"name": "smoltalk", "path": str(tmp_path / "smol"), "config": "all"},
        ],
        eval_fraction=0.2,
    )
    assert stats["input_rows"] == 55  # the smoltalk test split is not read
    assert stats["kept_rows"] == 55 and sum(stats["dropped"].values()) == 0
    for part in [stats, *stats["per_source"].values()]:
        assert part["input_rows"] == part["kept_rows"] + sum(part["dropped"].values())
    kept = read_kept(tmp_path / "out")
    assert 0 < stats["eval_rows"] < 55 and stats["train_rows"] + stats["eval_rows"] == 55
    by_id = {r["id"]: r for r in kept}
    for row in tulu:
        out = by_id[row["id"]]
        assert out["messages"] == row["messages"]
        assert out["source"] == f"tulu3:{row['source']}"
    smol_out = [r for r in kept if r["source"].startswith("smoltalk:")]
    assert sorted(json.dumps(r["messages"]) for r in smol_out) == sorted(
        json.dumps(r["messages"]) for r in smol
    )
    assert all(r["id"].startswith("smoltalk-") for r in smol_out)
    schema = pq.read_schema(next((tmp_path / "out" / "train").glob("*.parquet")))
    assert schema.names == ["id", "source", "messages"]
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {
        "train",
        "eval",
        "stats.json",
        "rejects.parquet",
        "report.md",
        "plots",
    }
    assert (tmp_path / "out" / "plots" / "lengths.png").stat().st_size > 1000
    assert "Drops by reason" in (tmp_path / "out" / "report.md").read_text()


MALFORMED = {
    "missing_messages": {"id": "a", "source": "x"},
    "messages_not_a_list": {"messages": "hello"},
    "messages_not_a_list_dict": {"messages": {"role": "user", "content": "hi"}},
    "empty_messages": {"messages": []},
    "message_not_an_object": {"messages": ["hi", "there"]},
    "missing_role": {"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]},
    "missing_content": {"messages": [{"role": "user"}, {"role": "assistant", "content": "yo"}]},
    "null_content": {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "yo"}]},
    "role_not_a_string": {"messages": [{"role": 1, "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    "content_not_a_string": {
        "messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "yo"}]
    },
    "content_number": {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "yo"}]},
    "unknown_role": {
        "messages": [{"role": "narrator", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    },
    "empty_content": {"messages": chat("", "yo")},
    "whitespace_content": {"messages": chat("hi", " \n\t ")},
    "no_user_turn": {
        "messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "yo"}]
    },
    "not_ending_with_assistant": {"messages": chat("hi", "yo", "again")},
    "single_user_turn": {"messages": chat("hi")},
    "starts_with_assistant": {
        "messages": [
            {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
        ]
    },
    "two_users_in_a_row": {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
        ]
    },
    "system_in_middle": {
        "messages": chat("hi", "yo")
        + [{"role": "system", "content": "s"}, {"role": "assistant", "content": "z"}]
    },
    "source_not_a_string": {"messages": chat("hi", "yo"), "source": 5},
    "id_not_a_string": {"messages": chat("hi", "yo"), "id": {"a": 1}},
    "row_not_an_object": [1, 2, 3],
    "row_is_string": "just text",
    "row_is_null": None,
    "sharegpt_bad_from": {
        "conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "yo"}]
    },
    "sharegpt_missing_value": {"conversations": [{"from": "human"}, {"from": "gpt", "value": "yo"}]},
}
EXPECTED_DETAIL = {
    "messages_not_a_list_dict": "messages_not_a_list",
    "null_content": "missing_content",
    "content_number": "content_not_a_string",
    "whitespace_content": "empty_content",
    "single_user_turn": "not_ending_with_assistant",
    "starts_with_assistant": "roles_out_of_order",
    "two_users_in_a_row": "roles_out_of_order",
    "system_in_middle": "roles_out_of_order",
    "row_is_string": "row_not_an_object",
    "row_is_null": "row_not_an_object",
    "sharegpt_bad_from": "unknown_role",
    "sharegpt_missing_value": "missing_content",
}


def test_malformed_corpus_never_crashes(tmp_path):
    assert len(MALFORMED) + 2 >= 20
    good = [{"id": f"g{i}", "messages": chat(f"good {i}", "fine")} for i in range(3)]
    rows = list(MALFORMED.values()) + good
    lines = ['{"messages": [', "not json at all"]  # two unparsable lines
    write_jsonl(tmp_path / "bad.jsonl", rows, raw_lines=lines)
    stats = run(tmp_path, [{"name": "bad", "path": str(tmp_path / "bad.jsonl")}])
    assert stats["input_rows"] == len(rows) + 2
    assert stats["kept_rows"] == 3
    assert stats["dropped"]["malformed"] == len(MALFORMED) + 2
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    by_row = {r["row"]: r for r in rejects}
    for index, kind in enumerate(MALFORMED):
        assert by_row[index]["reason"] == "malformed"
        assert by_row[index]["detail"] == EXPECTED_DETAIL.get(kind, kind), kind
    assert stats["malformed_detail"]["invalid_json"] == 2
    assert {r["id"] for r in read_kept(tmp_path / "out")} == {"g0", "g1", "g2"}


def test_too_long_drops_exactly_rows_over_max_tokens(tmp_path):
    tok = write_tiny_tokenizer(tmp_path / "tok")
    rows = [{"id": f"r{n}", "messages": chat("hello " * n, "world")} for n in range(1, 12)]
    limit = tiny_tokens(rows[5]["messages"])  # rows up to r6 fit exactly
    write_jsonl(tmp_path / "a.jsonl", rows)
    stats = run(
        tmp_path,
        [{"name": "a", "path": str(tmp_path / "a.jsonl")}],
        filters={"max_tokens": limit, "tokenizer": str(tok)},
    )
    kept = {r["id"] for r in read_kept(tmp_path / "out")}
    assert kept == {f"r{n}" for n in range(1, 7)}
    assert stats["dropped"]["too_long"] == 5
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert all(r["reason"] == "too_long" and r["tokens"] > limit for r in rejects)
    assert stats["token_counter"] == "chat_template"


def test_duplicates_across_sources_collapse_to_first_copy(tmp_path):
    shared = chat("What is 2+2?", "It is 4.")
    variant = chat("what  is 2+2?", "It is 4.\n")  # same after case/whitespace folding
    tulu = [
        {"id": "t0", "messages": shared, "source": "numina"},
        {"id": "t1", "messages": chat("only tulu", "yes"), "source": "numina"},
    ]
    smol = [
        {"messages": variant, "source": "numina-cot"},
        {"messages": shared, "source": "numina-cot"},
        {"messages": chat("only smol", "yes"), "source": "x"},
    ]
    write_tulu_dir(tmp_path / "tulu", tulu, shards=1)
    write_smoltalk_dir(tmp_path / "smol", smol, shards=1)
    sources = [
        {"name": "tulu3", "path": str(tmp_path / "tulu")},
        {"name": "smoltalk", "path": str(tmp_path / "smol"), "config": "all"},
    ]
    stats = run(tmp_path, sources)
    assert stats["dropped"]["duplicate"] == 2
    assert stats["per_source"]["smoltalk"]["dropped"]["duplicate"] == 2
    kept = read_kept(tmp_path / "out")
    assert sorted(r["id"] for r in kept if r["messages"] == shared) == ["t0"]
    # Reversed source order: the smoltalk copy (its first row, the variant) is kept instead.
    stats2 = run(tmp_path, sources[::-1], name="rev")
    kept2 = read_kept(tmp_path / "rev")
    dup_kept = [r for r in kept2 if r["source"].endswith("numina") or r["source"].endswith("cot")]
    assert [r["messages"] for r in dup_kept if "2+2" in r["messages"][0]["content"]] == [variant]
    assert stats2["per_source"]["tulu3"]["dropped"]["duplicate"] == 1


def test_exact_dedup_can_be_turned_off(tmp_path):
    rows = [{"id": f"r{i}", "messages": chat("same", "same")} for i in range(4)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    stats = run(
        tmp_path, [{"name": "a", "path": str(tmp_path / "a.jsonl")}], overrides=["filters.exact_dedup=false"]
    )
    assert stats["kept_rows"] == 4 and "duplicate" not in stats["dropped"]


def test_include_exclude_sources(tmp_path):
    write_tulu_dir(tmp_path / "tulu", tulu_rows(10), shards=1)
    src = [{"name": "tulu3", "path": str(tmp_path / "tulu")}]
    stats = run(tmp_path, src, filters={"exclude_sources": ["no_robots"]})
    assert stats["dropped"]["excluded_source"] == 5
    assert all(r["source"] == "tulu3:oasst" for r in read_kept(tmp_path / "out"))
    stats = run(tmp_path, src, name="inc", filters={"include_sources": ["tulu3:no_rob*"]})
    assert stats["kept_rows"] == 5
    assert all(r["source"] == "tulu3:no_robots" for r in read_kept(tmp_path / "inc"))


def test_decontamination_drops_rows_sharing_ngrams_with_eval_prompts(tmp_path):
    bench = "Natalia sold clips to 48 of her friends in April and then she sold half as many"
    rows = [
        {"id": "leak", "messages": chat(f"Solve this: {bench} clips in May.", "72")},
        {"id": "clean", "messages": chat("Natalia likes clips and friends in April", "ok")},
        {"id": "in_answer", "messages": chat("Tell me a story", bench)},  # only user turns count
    ]
    write_jsonl(tmp_path / "a.jsonl", rows)
    write_jsonl(tmp_path / "evalset.jsonl", [{"question": bench}])
    stats = run(
        tmp_path,
        [{"name": "a", "path": str(tmp_path / "a.jsonl")}],
        filters={"decontaminate": [str(tmp_path / "evalset.jsonl")], "decontaminate_ngram": 8},
    )
    assert stats["dropped"]["contaminated"] == 1
    assert {r["id"] for r in read_kept(tmp_path / "out")} == {"clean", "in_answer"}


def test_near_duplicates_dropped_keeping_first(tmp_path):
    pytest.importorskip("datasketch")
    base = " ".join(f"word{i}" for i in range(200))
    near = base.replace("word100", "changed")
    rows = [
        {"id": "first", "messages": chat("summarise", base)},
        {"id": "near", "messages": chat("summarise", near)},
        {"id": "other", "messages": chat("something", "completely different text here")},
    ]
    write_jsonl(tmp_path / "a.jsonl", rows)
    stats = run(
        tmp_path,
        [{"name": "a", "path": str(tmp_path / "a.jsonl")}],
        filters={"near_dedup": True, "near_dedup_threshold": 0.8},
    )
    assert stats["dropped"]["near_duplicate"] == 1
    assert {r["id"] for r in read_kept(tmp_path / "out")} == {"first", "other"}


def test_sharegpt_and_json_sources(tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "s"},
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "yo"},
            ]
        }
    ]
    (tmp_path / "sg.json").write_text(json.dumps(rows))
    run(tmp_path, [{"name": "sg", "path": str(tmp_path / "sg.json"), "format": "sharegpt"}])
    kept = read_kept(tmp_path / "out")
    assert kept[0]["messages"] == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]


def _tree(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_rerun_is_byte_identical_and_recovers_from_interruption(tmp_path):
    tok = write_tiny_tokenizer(tmp_path / "tok")
    rows = tulu_rows(40) + tulu_rows(5) + [{"id": "bad", "messages": [], "source": "x"}]
    write_tulu_dir(tmp_path / "tulu", rows, shards=2)
    write_smoltalk_dir(tmp_path / "smol", smol_rows(30))
    sources = [
        {"name": "tulu3", "path": str(tmp_path / "tulu")},
        {"name": "smoltalk", "path": str(tmp_path / "smol"), "config": "all"},
    ]
    extra = {
        "filters": {"max_tokens": 14, "tokenizer": str(tok)},
        "eval_fraction": 0.3,
        "shard_rows": 16,
        "seed": 7,
    }
    first = run(tmp_path, sources, **extra)
    snapshot = _tree(tmp_path / "out")
    assert len(list((tmp_path / "out" / "train").glob("train-*-of-*.parquet"))) > 1
    # a crashed run leaves a staging dir behind; the next run needs no clean-up
    (tmp_path / ".out.partial").mkdir()
    (tmp_path / ".out.partial" / "junk").write_text("x")
    second = run(tmp_path, sources, **extra)
    assert _tree(tmp_path / "out") == snapshot
    assert first == {**second, "wall_seconds": first["wall_seconds"]}
    assert not (tmp_path / ".out.partial").exists()
    other_seed = run(tmp_path, sources, name="s2", **{**extra, "seed": 8})
    assert read_split(tmp_path / "s2", "eval") != read_split(tmp_path / "out", "eval")
    assert other_seed["kept_rows"] == first["kept_rows"]


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"messages": chat("a", "b")}])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="refusing"):
        run(tmp_path, [{"name": "a", "path": str(tmp_path / "a.jsonl")}])
    assert (tmp_path / "out" / "precious.txt").exists()


def test_recipe_errors_are_one_line_user_errors(tmp_path, monkeypatch):
    good = write_recipe(tmp_path / "r.yaml", [{"name": "a", "path": str(tmp_path)}], tmp_path / "o")
    with pytest.raises(UserError) as err:
        load_data_recipe(good, ["filters.max_tokns=5"])
    line = str(err.value)
    assert "\n" not in line and "r.yaml: filters.max_tokns" in line and "max_tokens" in line
    with pytest.raises(UserError, match="did you mean 'eval_fraction'"):
        load_data_recipe(good, ["eval_fractoin=0.1"])
    with pytest.raises(UserError, match="sources.0.nam"):
        load_data_recipe(good, ["sources.0.nam=x"])
    with pytest.raises(UserError, match="filters.tokenizer"):
        load_data_recipe(good, ["filters.max_tokens=100"])
    with pytest.raises(UserError, match="seed: wrong type"):
        load_data_recipe(good, ["seed=abc"])
    recipe = load_data_recipe(good, ["output_dir=/tmp/x", "filters.max_tokens=9", "filters.tokenizer=t"])
    assert recipe.output_dir == "/tmp/x" and recipe.filters.max_tokens == 9
    missing = write_recipe(
        tmp_path / "m.yaml", [{"name": "a", "path": str(tmp_path / "nope")}], tmp_path / "o"
    )
    with pytest.raises(UserError, match="no such file"):
        prepare(str(missing), progress=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 not parquet")
    broken = write_recipe(
        tmp_path / "b.yaml", [{"name": "a", "path": str(tmp_path / "broken")}], tmp_path / "o"
    )
    with pytest.raises(UserError, match="cannot read parquet"):
        prepare(str(broken), progress=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.partial").exists()
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no retry delays
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="no-such-dataset-xyz. is neither a local path nor in the hub cache"):
        prepare(str(good), ["sources.0.path=nobody-here/no-such-dataset-xyz"], progress=False)


def test_shipped_recipe_is_valid():
    root = Path(__file__).resolve().parents[2]
    recipe = load_data_recipe(root / "recipes" / "data" / "tulu3_smoltalk.yaml")
    assert [s.path for s in recipe.sources] == ["allenai/tulu-3-sft-mixture", "HuggingFaceTB/smoltalk"]
    assert recipe.sources[1].config == "all"
    assert recipe.filters.exact_dedup and recipe.filters.max_tokens


def test_chat_template_that_raises_drops_the_row_not_the_run(tmp_path):
    tok = write_tiny_tokenizer(tmp_path / "tok")
    (tok / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    rows = [
        {"id": "plain", "messages": chat("hello", "world")},
        {"id": "sys", "messages": chat("hello", "world", system="rules")},
    ]
    write_jsonl(tmp_path / "a.jsonl", rows)
    stats = run(
        tmp_path,
        [{"name": "a", "path": str(tmp_path / "a.jsonl")}],
        filters={"max_tokens": 100, "tokenizer": str(tok)},
    )
    assert stats["malformed_detail"] == {"chat_template_error": 1}
    assert [r["id"] for r in read_kept(tmp_path / "out")] == ["plain"]


def test_a_lone_surrogate_drops_its_row_not_the_run(tmp_path):
    rows = [
        {"id": "ok", "messages": chat("hello", "world")},
        {"id": "bad", "messages": chat("hello \ud800", "world")},  # valid JSON, not valid Unicode
        {"id": "bad-id-\udfff", "messages": chat("hi", "there")},
    ]
    write_jsonl(tmp_path / "a.jsonl", rows)
    stats = run(tmp_path, [{"name": "a", "path": str(tmp_path / "a.jsonl")}])
    assert stats["input_rows"] == 3 and stats["kept_rows"] == 1
    assert stats["malformed_detail"] == {"invalid_unicode": 2}
    assert [r["id"] for r in read_kept(tmp_path / "out")] == ["ok"]
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert [r["id"] for r in rejects] == [None, None] and "\\ud800" in rejects[0]["raw"]
