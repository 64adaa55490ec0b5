"""The benchmarks m1 knows by name: the ones shipped in m1/benchmarks/data and the
ones a user supplies (their licences, or their authors, do not allow shipping them).

User-supplied benchmarks are looked for in `data_dir` (the CLI's --data-dir), else in
$M1_DATA_DIR, under the file names below (a .gz of the same name works too):

  gpqa            gpqa.json            HuatuoGPT-o1 "GPQA_Medical_test" list (eval format)
  lancet          lancet.json          eval format {question, options, answer_idx}
  nejm            nejm.json            eval format {question, options, answer_idx}
  medbullets_op4  medbullets_op4.csv   official CSV (question, opa..opd, answer_idx), or .jsonl / .json
  medbullets_op5  medbullets_op5.csv   same with ope
  medxpertqa      medxpertqa.jsonl     {id, question, options A-J, label}
  hle             hle.jsonl            Humanity's Last Exam {question, options, answer "C. text", answer_idx}

The upstream names also work (GPQA_Medical_test.json, MedXpertQA_test.jsonl, HLE_biomed.jsonl),
so $M1_DATA_DIR can point straight at a MedReason `eval_data` folder.

Every item loaded by name has source <name> and id "<name>-<id in file, or 4-digit position>",
so ids stay unique when a suite mixes benchmarks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from m1.benchmarks.items import Item
from m1.benchmarks.loaders import parse_bytes, read_file, sample
from m1.errors import M1Error

ENV_VAR = "M1_DATA_DIR"
IN, OUT = "in-distribution", "out-of-distribution"  # as the m1 paper splits its sources


@dataclass(frozen=True)
class Benchmark:
    """One named benchmark: shipped (`filename` under m1/benchmarks/data) or user-supplied (`user_files`)."""

    description: str
    size: int | None  # official question count; None when it is not fixed
    group: str = OUT
    split: str = "test"
    filename: str | None = None
    aliases: tuple[str, ...] = ()
    user_files: tuple[str, ...] = ()  # accepted names in the data dir, the documented one first
    only: tuple[str, object] | None = None  # a view of a shipped file: keep items whose metadata[key] == value

    @property
    def shipped(self) -> bool:
        return self.filename is not None

    def __str__(self) -> str:
        size = f"{self.size} questions" if self.size else "size varies"
        where = "shipped" if self.shipped else f"user file {self.user_files[0]} in --data-dir or ${ENV_VAR}"
        return f"{self.description}; {self.split}, {size}; {self.group}; {where}"


BENCHMARKS: dict[str, Benchmark] = {
    # ---- in-distribution (the m1 paper's MedMCQA, MedQA, PubMedQA) ----
    "medmcqa": Benchmark("MedMCQA (Indian medical entrance exams)", 4183, IN, "validation",
                         "medmcqa_validation.jsonl.gz", aliases=("medmcqa_validation", "medmcqa_val")),
    "medqa": Benchmark("MedQA-USMLE 4-option (US medical licensing exam)", 1273, IN, "test",
                       "medqa_usmle_4opt_test.json.gz", aliases=("medqa_usmle", "medqa-usmle", "medqa_4opt")),
    "medqa_5opt": Benchmark("MedQA-USMLE 5-option, original options (meta_info step1 / step2&3)", 1273, IN, "test",
                            "medqa_usmle_5opt_test.jsonl.gz", aliases=("medqa5", "medqa-5opt", "medqa_usmle_5opt")),
    "pubmedqa": Benchmark("PubMedQA labelled (pqa-l, all 1000 as m1 and HuatuoGPT-o1 evaluate), with abstract",
                          1000, IN, "pqa-l", "pubmedqa_pqal.jsonl.gz", aliases=("pubmedqa_pqal", "pubmedqa_all")),
    "pubmedqa_test": Benchmark("PubMedQA official test split (500 of pqa-l)", 500, IN, "test",
                               "pubmedqa_pqal.jsonl.gz", aliases=("pubmedqa_official",), only=("official_test", True)),
    # ---- out-of-distribution, shipped ----
    "mmlu_pro": Benchmark("MMLU-Pro health + biology (up to 10 options)", 1535, OUT, "test",
                          "mmlu_pro_medical_test.jsonl.gz", aliases=("mmlu-pro", "mmlu_pro_medical", "mmlupro")),
    "mmlu_medical": Benchmark("MMLU, six medical subjects (final version)", 1089, OUT, "test",
                              "mmlu_medical_test.jsonl.gz", aliases=("mmlu", "mmlu-medical", "mmlu_med")),
    "headqa": Benchmark("HEAD-QA English (Spanish healthcare exams, machine-translated)", 2742, OUT, "test",
                        "headqa_en_test.jsonl.gz", aliases=("head-qa", "head_qa", "headqa_en")),
    # ---- out-of-distribution, user-supplied ----
    "gpqa": Benchmark("GPQA medical split (HuatuoGPT-o1: 78 questions x 5 option orders)", 390,
                      user_files=("gpqa.json", "gpqa.jsonl", "GPQA_Medical_test.json"), aliases=("gpqa_medical",)),
    "lancet": Benchmark("Lancet clinical cases (m1 ReasoningEval)", None,
                        user_files=("lancet.json", "lancet.jsonl"), aliases=("the_lancet",)),
    "nejm": Benchmark("NEJM clinical cases (m1 ReasoningEval)", None,
                      user_files=("nejm.json", "nejm.jsonl"), aliases=("nejm_cases",)),
    "medbullets_op4": Benchmark("MedBullets, 4 options (USMLE-style)", 308,
                                user_files=("medbullets_op4.csv", "medbullets_op4.jsonl", "medbullets_op4.json"),
                                aliases=("medbullets4", "medbullets-op4")),
    "medbullets_op5": Benchmark("MedBullets, 5 options (USMLE-style)", 308,
                                user_files=("medbullets_op5.csv", "medbullets_op5.jsonl", "medbullets_op5.json"),
                                aliases=("medbullets5", "medbullets-op5")),
    "medxpertqa": Benchmark("MedXpertQA text (10 options; MedReason ships a 1449-item subset)", 2450,
                            user_files=("medxpertqa.jsonl", "MedXpertQA_test.jsonl", "medxpertqa.json"),
                            aliases=("medxpert", "medxpertqa_text")),
    "hle": Benchmark("Humanity's Last Exam, biomedical multiple choice", None,
                     user_files=("hle.jsonl", "HLE_biomed.jsonl", "hle.json"),
                     aliases=("humanitys_last_exam", "hle_biomed", "hle_med")),
}

# The m1 paper's ten evaluation sources.
SUITES: dict[str, list[str]] = {
    "m1": ["medmcqa", "medqa", "pubmedqa", "mmlu_pro", "gpqa", "lancet",
           "medbullets_op4", "medbullets_op5", "medxpertqa", "nejm"],
}


def load_benchmark(name: str, limit: int | None = None, seed: int = 0,
                   data_dir: str | Path | None = None) -> list[Item]:
    """Items of a named benchmark; `limit` takes a seeded, file-ordered sample."""
    key = canonical_name(name)
    bench = BENCHMARKS[key]
    if bench.filename is not None:  # shipped
        items = _shipped_items(key, bench, bench.filename)
    else:
        path = find_user_file(key, data_dir)
        if path is None:
            raise M1Error(_missing_message(key, bench, data_dir))
        items = read_file(path, source=key, id_prefix=key)
    return sample(items, limit, seed)


def find_user_file(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The file a user supplied for benchmark `name`, or None."""
    bench = BENCHMARKS[canonical_name(name)]
    folder = _data_dir(data_dir)
    if folder is None:
        return None
    for filename in bench.user_files:
        for candidate in (folder / filename, folder / f"{filename}.gz"):
            if candidate.is_file():
                return candidate
    return None


def is_present(name: str, data_dir: str | Path | None = None) -> bool:
    bench = BENCHMARKS[canonical_name(name)]
    if bench.filename is not None:  # shipped
        return _resource(bench.filename).is_file()
    return find_user_file(name, data_dir) is not None


def resolve_suite(name: str, data_dir: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(benchmarks of the suite present here, those missing), each in suite order."""
    suite = SUITES.get(name.strip().lower())
    if suite is None:
        raise M1Error(f'unknown suite "{name}"; known suites: {", ".join(SUITES)}')
    check_data_dir(data_dir)
    present = [b for b in suite if is_present(b, data_dir)]
    return present, [b for b in suite if b not in present]


def list_benchmarks(data_dir: str | Path | None = None) -> list[dict]:
    """One row per benchmark for `m1 benchmarks`; present is True/False."""
    check_data_dir(data_dir)
    return [{"name": name, "group": b.group, "split": b.split, "size": b.size, "shipped": b.shipped,
             "present": is_present(name, data_dir), "description": b.description,
             "file": b.filename if b.shipped else b.user_files[0]}
            for name, b in BENCHMARKS.items()]


def canonical_name(name: str) -> str:
    wanted = name.strip().lower().replace(" ", "_")
    for key, bench in BENCHMARKS.items():
        if wanted == key or wanted in (a.lower() for a in bench.aliases):
            return key
    raise M1Error(f'unknown benchmark "{name}"; known benchmarks: {", ".join(BENCHMARKS)} '
                  "(see `m1 benchmarks`); or give the path of a .json/.jsonl/.csv file")


def _shipped_items(key: str, bench: Benchmark, filename: str) -> list[Item]:
    where = f"m1 package data file {filename}"
    try:
        raw = _resource(filename).read_bytes()
    except OSError:
        raise M1Error(f"{where} is missing; the m1 install is incomplete, reinstall m1") from None
    items = parse_bytes(raw, where, filename, source=key, id_prefix=key)
    if bench.only is not None:
        field, value = bench.only
        items = [it for it in items if it.metadata.get(field) == value]
    if len(items) != bench.size:
        # A silent change in size would make results incomparable between installs.
        raise M1Error(f"{where} gives {len(items)} questions for {key}, expected {bench.size}; reinstall m1")
    return items


def _resource(filename: str):
    return resources.files("m1.benchmarks") / "data" / filename


def _data_dir(data_dir: str | Path | None) -> Path | None:
    folder = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    return Path(folder).expanduser() if folder is not None else None


def check_data_dir(data_dir: str | Path | None) -> None:
    """A data folder named (--data-dir or $M1_DATA_DIR) must be one: say so before listing or
    running anything, rather than report every user-file benchmark as absent."""
    folder = _data_dir(data_dir)
    if folder is not None and not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        named = "--data-dir" if data_dir is not None else f"${ENV_VAR}"
        raise M1Error(f"{named} {folder} {what}; give the folder that holds your benchmark files "
                      "(e.g. medbullets_op4.csv, gpqa.json)")


def _missing_message(key: str, bench: Benchmark, data_dir: str | Path | None) -> str:
    folder = _data_dir(data_dir)
    if folder is None:
        looked = f"no --data-dir given and ${ENV_VAR} is not set"
    else:
        looked = f"looked in {folder}" + ("" if folder.is_dir() else ", which is not a folder")
    names = " or ".join(bench.user_files)
    return (f'benchmark "{key}" is not shipped with m1 and its file is missing ({looked}); '
            f"put {names} in a folder and pass it as --data-dir or set ${ENV_VAR}")
