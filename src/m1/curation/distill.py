"""Stage 4, distill: the teacher's reasoning and answer for every question left.

Each question becomes the m1 prompt ("Return your final response within \\boxed{}. "
+ question and lettered options; configurable) sent to the teacher (teacher.py). A
question answered before, in this run or an earlier, killed one, comes from the cache
without a request. Questions that still fail after all retries are listed in the
"failures" table and left out of "data"; the next build asks for them again.
"""
from __future__ import annotations

import sys
from pathlib import Path

from m1.curation.config import TeacherConfig
from m1.curation.records import prompt_for, row_to_item
from m1.curation.teacher import Failure, ResponseCache, Teacher


def distill(rows: list[dict], cfg: TeacherConfig, cache_path: str | Path,
            progress: bool = True) -> tuple[list[dict], list[dict], dict]:
    """(rows with the teacher's answer, failures, stats)."""
    if not rows:
        return [], [], {"requests": 0, "answered": 0, "cache_hits": 0}
    cache = ResponseCache(cache_path)
    try:
        teacher = Teacher(cfg, cache)
        jobs = [teacher.messages(prompt_for(row_to_item(r), cfg.prompt)) for r in rows]
        done = [0]

        def tick(i, result):  # a line every ~5% so a long run shows it is alive
            done[0] += 1
            if progress and (done[0] % max(1, len(jobs) // 20) == 0 or done[0] == len(jobs)):
                s = teacher.stats
                print(f"  distill {done[0]}/{len(jobs)}: {s.answered} new, {s.cache_hits} cached, "
                      f"{s.failed} failed, {sum(s.retries.values())} retries", file=sys.stderr, flush=True)

        results = teacher.run(jobs, on_result=tick)
        out, failures = [], []
        for row, res in zip(rows, results):
            if isinstance(res, Failure):
                failures.append({"id": row["id"], "source": row["source"], "error": res.error,
                                 "attempts": res.attempts, "cache_key": res.key})
                continue
            out.append({**row, "reasoning": res.reasoning, "response": res.content,
                        "reasoning_source": res.reasoning_source, "finish_reason": res.finish_reason or "",
                        "teacher": res.model or teacher.model, "prompt_tokens": res.prompt_tokens,
                        "completion_tokens": res.completion_tokens, "cache_key": res.key})
        stats = {"teacher_model": teacher.model, **teacher.stats.as_dict(), "cache": str(cache_path),
                 "cache_entries": len(cache)}
        return out, failures, stats
    finally:
        cache.close()
