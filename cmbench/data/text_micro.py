"""Generated text-to-text tasks for the micro text suite (the CPU analogue of the Flan-T5 GLUE
stream): sentences about a small world of things (an animal, fruit, tool or vehicle, with a
colour and a good or bad adjective), and questions about them answered in words.

* **The eight target tasks** mirror GLUE's: a grammaticality judgement (CoLA), sentiment
  (SST-2), paraphrase (MRPC), question answerability (QNLI), duplicate questions (QQP),
  entailment (RTE), three-way inference (MNLI) and graded similarity scored by Spearman's ρ
  (STS-B), each with its own prompt and label words.
* **The pretraining tasks** (``pretrain_*``) are a broad mixture of *other* questions about
  the same world (the colour of a thing, its kind, counting, copying, single-word sentiment,
  whether two sentences share a thing), and the eight target tasks asked in a *second*
  template on examples of their own (``pretrain_gram`` …): θ0 learns the world, the answer
  format and something of each task, as Flan-T5 met GLUE's tasks in other templates during
  instruction tuning, and never sees a target task's scored template or its splits.

Splits are generated from the data seed and the task; a task's train, validation and test
examples are drawn apart (no example in two splits). Every sentence is built from
``VOCAB``, the word-level vocabulary of the suite's tokenizer.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from functools import lru_cache

from . import TaskData, TextSplit, dataset, split_defaults

# Bump when a change alters any generated prompt, target or split.
TEXT_MICRO_VERSION = 2

KINDS = {
    "animal": ["cat", "dog", "fox", "owl", "bee", "cow", "eel", "yak"],
    "fruit": ["apple", "pear", "plum", "fig", "lime", "kiwi", "date", "grape"],
    "tool": ["saw", "axe", "drill", "file", "rake", "hoe", "vise", "awl"],
    "vehicle": ["car", "bus", "van", "cab", "jet", "ship", "tram", "bike"],
}
COLOURS = ["red", "blue", "green", "pink", "gray", "gold", "tan", "teal"]
GOOD = ["nice", "fine", "great", "lovely", "happy", "calm", "kind", "bright"]
BAD = ["ugly", "poor", "awful", "sad", "rude", "dull", "grim", "weak"]
NOUNS = [n for ns in KINDS.values() for n in ns]
KIND_OF = {n: k for k, ns in KINDS.items() for n in ns}

# prompt words of every template (kept in the vocabulary)
_PROMPT_WORDS = (
    "is the sentence well formed ? answer acceptable or unacceptable . given determine feeling positive negative "
    "do and say same thing yes no does mention a an start with imply contradict neutral to entailment "
    "contradiction rate how similar are from 0 to 5 what colour of in kind many copy word good bad share "
    "first which comes last contain , : phrase order part against beside things"
).split()
# words only the target tasks' second templates use (appended last: earlier ids unchanged)
_TEMPLATE_WORDS = "it this there if then".split()
NUMBERS = [f"{x / 10:.1f}" for x in range(51)] + [str(i) for i in range(10)]
SPECIAL = ["<pad>", "</s>", "<unk>"]


@lru_cache(maxsize=1)
def vocab() -> list[str]:
    """The word-level vocabulary, in a fixed order (T5's special tokens first)."""
    out = list(SPECIAL)
    for w in [*NOUNS, *COLOURS, *GOOD, *BAD, *KINDS, *_PROMPT_WORDS, *NUMBERS, "'", *_TEMPLATE_WORDS]:
        if w not in out:
            out.append(w)
    return out


def tokenizer():
    """The suite's tokenizer: whitespace words of ``vocab()``, ``</s>`` appended, as T5's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab())}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


# -- the world --------------------------------------------------------------------------------


def _phrase(rng: random.Random, noun: str | None = None) -> tuple[str, str, str]:
    """(adjective, colour, noun)."""
    adj = rng.choice(GOOD if rng.random() < 0.5 else BAD)
    return adj, rng.choice(COLOURS), noun or rng.choice(NOUNS)


def _sentence(rng: random.Random, lo: int = 2, hi: int = 4) -> list[tuple[str, str, str]]:
    nouns = rng.sample(NOUNS, rng.randint(lo, hi))
    return [_phrase(rng, n) for n in nouns]


def _text(s: list[tuple[str, ...]]) -> str:
    return " and ".join(" ".join(p) for p in s)


def _q(s: str) -> str:
    return f"' {s} '"


# -- the target tasks: (prompt, target) from a generator --------------------------------------


def _gram(rng, alt=False):  # CoLA: a phrase in the wrong order is unacceptable
    s = _sentence(rng)
    ok = rng.random() < 0.5
    if not ok:  # every phrase in one of the wrong orders: a tiny model learns word order, not a search
        s = [rng.choice([(n, a, c), (c, n, a), (a, n, c)]) for a, c, n in s]
    prompt = (
        f"{_q(_text(s))} : is it acceptable or unacceptable ?"
        if alt
        else f"is the sentence {_q(_text(s))} well formed ? answer acceptable or unacceptable ."
    )
    return prompt, "acceptable" if ok else "unacceptable"


def _sent(rng, alt=False):  # SST-2: more good than bad adjectives
    n = rng.choice([3, 5])
    s = _sentence(rng, n, n)
    prompt = (
        f"{_q(_text(s))} : is this positive or negative ?"
        if alt
        else f"given the sentence {_q(_text(s))} determine the feeling : positive or negative ?"
    )
    return prompt, "positive" if sum(p[0] in GOOD for p in s) * 2 > n else "negative"


def _pair(rng, same: bool):
    a = _sentence(rng, 3, 4)
    b = list(a)
    rng.shuffle(b)
    if not same:
        i = rng.randrange(len(b))
        b[i] = _phrase(rng, rng.choice([n for n in NOUNS if n not in {p[2] for p in a}]))
    return a, b


def _same(rng, alt=False):  # MRPC: the same phrases in another order
    yes = rng.random() < 0.5
    a, b = _pair(rng, yes)
    prompt = (
        f"{_q(_text(a))} , {_q(_text(b))} : is it the same thing ? yes or no ."
        if alt
        else f"do {_q(_text(a))} and {_q(_text(b))} say the same thing ? answer yes or no ."
    )
    return prompt, "yes" if yes else "no"


def _mention(rng, alt=False):  # QNLI: is a thing of this kind mentioned
    s = _sentence(rng)
    kinds = {KIND_OF[p[2]] for p in s}
    yes = rng.random() < 0.5 and len(kinds) > 0
    kind = rng.choice(sorted(kinds)) if yes else rng.choice(sorted(set(KINDS) - kinds) or sorted(KINDS))
    prompt = (
        f"is there a {kind} in {_q(_text(s))} ? yes or no ."
        if alt
        else f"does the sentence {_q(_text(s))} mention a {kind} ? answer yes or no ."
    )
    return prompt, "yes" if kind in kinds else "no"


def _start(rng, alt=False):  # QQP: do both start with the same thing
    a, b = _sentence(rng), _sentence(rng)
    if rng.random() < 0.5:
        b[0] = _phrase(rng, a[0][2])
    prompt = (
        f"{_q(_text(a))} , {_q(_text(b))} : is the first thing the same ? yes or no ."
        if alt
        else f"do {_q(_text(a))} and {_q(_text(b))} start with the same thing ? answer yes or no ."
    )
    return prompt, "yes" if a[0][2] == b[0][2] else "no"


def _subset(rng):
    a = _sentence(rng, 3, 4)
    r = rng.random()
    if r < 1 / 3:  # entailed: some of a's phrases
        b = rng.sample(a, rng.randint(1, len(a) - 1))
    elif r < 2 / 3:  # contradicted: no thing of a
        b = [_phrase(rng, n) for n in rng.sample([n for n in NOUNS if n not in {p[2] for p in a}], 2)]
    else:  # neutral: one of a's phrases and a new thing
        b = [rng.choice(a), _phrase(rng, rng.choice([n for n in NOUNS if n not in {p[2] for p in a}]))]
    label = (
        "entailment"
        if set(b) <= set(a)
        else "contradiction"
        if not {p[2] for p in a} & {p[2] for p in b}
        else "neutral"
    )
    return a, b, label


def _entail(rng, alt=False):  # RTE: does a entail b
    a, b, label = _subset(rng)
    prompt = (
        f"if {_q(_text(a))} then {_q(_text(b))} ? yes or no ."
        if alt
        else f"does {_q(_text(a))} imply {_q(_text(b))} ? answer yes or no ."
    )
    return prompt, "yes" if label == "entailment" else "no"


def _nli(rng, alt=False):  # MNLI: entailment, contradiction or neutral
    a, b, label = _subset(rng)
    prompt = (
        f"{_q(_text(a))} , {_q(_text(b))} : entailment , contradiction or neutral ?"
        if alt
        else f"does {_q(_text(a))} imply , contradict or is neutral to {_q(_text(b))} ? answer entailment , "
        "contradiction or neutral ."
    )
    return prompt, label


def _similar(rng, alt=False):  # STS-B: 5 × the share of things in common, one decimal
    a = _sentence(rng, 3, 4)
    k = rng.randint(0, len(a))
    b = rng.sample(a, k) + [
        _phrase(rng, n) for n in rng.sample([n for n in NOUNS if n not in {p[2] for p in a}], len(a) - k)
    ]
    rng.shuffle(b)
    shared = len({p[2] for p in a} & {p[2] for p in b})
    prompt = (
        f"{_q(_text(a))} , {_q(_text(b))} : how similar from 0 to 5 ?"
        if alt
        else f"rate how similar {_q(_text(a))} and {_q(_text(b))} are from 0 to 5 ."
    )
    return prompt, f"{5 * shared / len(a):.1f}"


# -- the pretraining mixture: other questions about the same world ---------------------------


def _p_colour(rng):
    s = _sentence(rng)
    p = rng.choice(s)
    return f"what colour is the {p[2]} in {_q(_text(s))} ?", p[1]


def _p_kind(rng):
    n = rng.choice(NOUNS)
    return f"what kind of thing is a {n} ?", KIND_OF[n]


def _p_count(rng):
    s = _sentence(rng, 1, 5)
    kind = rng.choice(sorted(KINDS))
    return f"how many {kind} in {_q(_text(s))} ?", str(sum(KIND_OF[p[2]] == kind for p in s))


def _p_copy(rng):
    s = _text(_sentence(rng, 1, 2))
    return f"copy {_q(s)} .", s


def _p_word(rng):  # single-word sentiment, in the sentiment task's label words
    w = rng.choice(GOOD + BAD)
    return f"is the word {w} good or bad ?", "positive" if w in GOOD else "negative"


def _p_order(rng):  # one phrase's word order, in the grammaticality task's label words
    a, c, n = _phrase(rng)
    ok = rng.random() < 0.5
    words = (a, c, n) if ok else rng.choice([(n, a, c), (c, n, a), (a, n, c)])
    return f"is the phrase {_q(' '.join(words))} in order ?", "acceptable" if ok else "unacceptable"


def _p_relation(rng):  # one thing against a sentence, in the inference task's label words
    a = _sentence(rng)
    r = rng.random()
    if r < 1 / 3:
        b, label = rng.choice(a), "entailment"
    elif r < 2 / 3:
        b, label = _phrase(rng, rng.choice([n for n in NOUNS if n not in {p[2] for p in a}])), "contradiction"
    else:
        p = rng.choice(a)
        b = _phrase(rng, p[2])
        label = "entailment" if b == p else "neutral"
    return f"is {_q(' '.join(b))} part of , against or beside {_q(_text(a))} ?", label


def _p_overlap(rng):  # how many things two sentences share, a number as the similarity task answers
    a, b = _sentence(rng), _sentence(rng)
    for i in range(rng.randint(0, min(len(a), len(b)))):
        b[i] = _phrase(rng, a[i][2])
    return f"how many things do {_q(_text(a))} and {_q(_text(b))} share ?", str(
        len({p[2] for p in a} & {p[2] for p in b})
    )


def _p_isa(rng):
    n, kind = rng.choice(NOUNS), rng.choice(sorted(KINDS))
    return f"is a {n} a {kind} ? answer yes or no .", "yes" if KIND_OF[n] == kind else "no"


def _p_share(rng):
    a, b = _sentence(rng), _sentence(rng)
    if rng.random() < 0.5:
        b[rng.randrange(len(b))] = _phrase(rng, rng.choice(a)[2])
    shared = {p[2] for p in a} & {p[2] for p in b}
    return f"do {_q(_text(a))} and {_q(_text(b))} share a thing ? answer yes or no .", "yes" if shared else "no"


def _p_first(rng):
    s = _sentence(rng)
    return f"which thing comes first in {_q(_text(s))} ?", s[0][2]


def _p_contain(rng):
    s = _sentence(rng)
    c = rng.choice(COLOURS)
    return f"does {_q(_text(s))} contain a {c} thing ? answer yes or no .", ("yes" if c in {p[1] for p in s} else "no")


GENERATORS: dict[str, Callable[..., tuple[str, str]]] = {
    "gram": _gram,
    "sent": _sent,
    "same": _same,
    "mention": _mention,
    "start": _start,
    "entail": _entail,
    "nli": _nli,
    "similar": _similar,
    "pretrain_colour": _p_colour,
    "pretrain_kind": _p_kind,
    "pretrain_count": _p_count,
    "pretrain_copy": _p_copy,
    "pretrain_word": _p_word,
    "pretrain_isa": _p_isa,
    "pretrain_share": _p_share,
    "pretrain_first": _p_first,
    "pretrain_contain": _p_contain,
    "pretrain_order": _p_order,
    "pretrain_relation": _p_relation,
    "pretrain_overlap": _p_overlap,
}
# The target tasks asked in a second template, on examples drawn apart from theirs (their own
# stream): Flan's mixture holds GLUE's tasks in other templates than the one scored, so
# Flan-T5 answers them before any expert is trained.
GENERATORS.update(
    {
        f"pretrain_{t}": functools.partial(GENERATORS[t], alt=True)
        for t in ("gram", "sent", "same", "mention", "start", "entail", "nli", "similar")
    }
)
METRIC = {"similar": "spearman"}  # the rest: exact match
LABELS = {
    "gram": ["acceptable", "unacceptable"],
    "sent": ["positive", "negative"],
    "nli": ["entailment", "contradiction", "neutral"],
}


def _examples(task: str, n: int, seed: int) -> tuple[list[str], list[str]]:
    """n prompts of ``task`` with their targets, distinct for a target task (a generator
    repeats itself now and then on so small a world: a prompt is kept once, so no example is
    in two splits); a pretraining task's (only its train split is read) may repeat: some
    have a few dozen distinct prompts."""
    gen = GENERATORS[task]
    rng = random.Random(f"text-micro-{task}-{seed}")
    prompts: list[str] = []
    targets: list[str] = []
    seen: set[str] = set()
    distinct = not task.startswith("pretrain_")
    tries = 0
    while len(prompts) < n:
        p, t = gen(rng)
        tries += 1
        if distinct and p in seen:
            if tries > 50 * n:
                raise RuntimeError(f"text_micro {task}: cannot draw {n} distinct examples")
            continue
        seen.add(p)
        prompts.append(p)
        targets.append(t)
    return prompts, targets


@dataset(
    "text_micro",
    TEXT_MICRO_VERSION,
    sizes=lambda p: split_defaults(text_micro, p),
)
def text_micro(
    task_name: str,
    data_seed: int,
    img_size: int,
    *,
    task: str,
    n_train: int = 1000,
    n_val: int = 200,
    n_test: int = 300,
) -> TaskData:
    """A generated text task (``task``: one of ``GENERATORS``), split into train, val and test
    from one stream of distinct examples drawn with the data seed."""
    if task not in GENERATORS:
        from .. import CmbenchError

        raise CmbenchError(f"text_micro: unknown task {task!r}; known: {', '.join(GENERATORS)}")
    prompts, targets = _examples(task, n_train + n_val + n_test, data_seed)
    metric = METRIC.get(task, "exact_match")

    def part(a: int, b: int) -> TextSplit:
        return TextSplit(task, prompts[a:b], targets[a:b], metric)

    return TaskData(
        task_name,
        LABELS.get(task, sorted(set(targets)) if metric == "exact_match" else []),
        train=part(0, n_train),
        val=part(n_train, n_train + n_val),
        test=part(n_train + n_val, n_train + n_val + n_test),
    )
