"""Attention stage: what the model looks at for one completion, per line of its prompt.

    midline-train attention src/app.py:42:9 [--model DIR] [--settings JSON] --out work/attention.png

It runs the completion the server would run at FILE:LINE:COL (1-based, as `midline complete`): the server's context
and prompt builder, its Completer and post-processing (an explicit request), with the model loaded as the server
loads it. Then it feeds the prompt and the tokens that wrote the suggestion (the generation behind the shown
suggestion, up to the end of what was shown; else the model's first answer) through the model once more with eager
attention, and for each generated token takes the
attention of the position that produced it: per layer, the mean over heads, summed over the tokens of each prompt
line. A line's score is the share of a generated token's attention it received, averaged over the generated
tokens; per layer and overall (the mean over layers). The rest of the attention went to the generated tokens
themselves (`generated`) and to FIM tokens (`special`).

Prompt lines are labelled by region: `prefix` and `suffix` lines with their line in the file, `snippet` lines (other
files' definitions and retrieved chunks, with their path), `header` (the repository name and the file's path, and for
formats without file tokens the snippets as comments). It writes OUT.png (a heat map: a row per line, a column per
layer and one for the mean, the regions marked beside it) and OUT.json (the scores, the lines, the suggestion).
Any local model that can return attentions works (transformers' eager attention).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from midline.model import fim, languages
from midline.model.backend import decoded_ends
from midline.training.stage import write_json

REGIONS = {"header": "#9e9e9e", "snippet": "#7b1fa2", "prefix": "#1565c0", "suffix": "#2e7d32"}
MAX_LABEL = 60  # characters of a line's text in the figure


def prompt_lines(engine, built, mode: fim.Mode | None) -> tuple[list[dict], list[int]]:
    """The prompt's lines (region, label, text, file line for prefix and suffix) and, per prompt token, the index of
    its line (-1: a FIM token): the prompt's segments (in layout `mode`) encoded one by one as `FimFormat.encode`
    does, each token on the line its last character is on. Checks that they make the prompt the model was given."""
    fmt, tokenizer, fim_prompt = engine.fim, engine.tokenizer, built.fim
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)  # noqa: E731
    ids: list[int] = [tokenizer.bos_token_id] if fmt.bos and tokenizer.bos_token_id is not None else []
    owner: list[int] = [-1] * len(ids)
    lines: list[dict] = []
    ctx = built.context
    cursor_line = ctx.text.count("\n", 0, ctx.offset)  # 0-based
    after = None
    snippets = {f"{s.path}\n{s.text if s.text.endswith(chr(10)) else s.text + chr(10)}": s.path
                for s in fim_prompt.snippets}
    for text, special in fmt.segments(fim_prompt, mode):
        if special:
            ids.append(fim._special_id(tokenizer, text))
            owner.append(-1)
            after = text
            continue
        if not text:
            continue
        tokens = fim.encode_text(tokenizer, text)
        regions = _char_regions(text, after, fmt, fim_prompt, snippets)
        segment_lines = text.split("\n")
        first = len(lines)
        starts = [0]
        for line in segment_lines[:-1]:
            starts.append(starts[-1] + len(line) + 1)
        for k, line in enumerate(segment_lines):
            region = regions[min(starts[k], len(regions) - 1)] if regions else "header"
            lines.append({"region": region, "text": line, "file_line": None, "label": ""})
        prefix_rows = [i for i in range(first, len(lines)) if lines[i]["region"] == "prefix"]
        for n, i in enumerate(prefix_rows):
            lines[i]["file_line"] = cursor_line - (len(prefix_rows) - 1 - n) + 1
        suffix_rows = [i for i in range(first, len(lines)) if lines[i]["region"] == "suffix"]
        for n, i in enumerate(suffix_rows):
            lines[i]["file_line"] = cursor_line + n + 1
        ends = decoded_ends(decode, tokens)
        start = 0
        for end in ends:
            at = max(start, end - 1)
            owner.append(first + text.count("\n", 0, min(at, len(text))))
            start = end
        ids += tokens
    if ids != list(built.encoded):
        raise ValueError("the prompt's segments, encoded one by one, are not the prompt the model was given")
    for line in lines:
        where = f"L{line['file_line']}" if line["file_line"] is not None else line["region"]
        line["label"] = f"{where}: {line['text'][:MAX_LABEL]}"
    return lines, owner


def _char_regions(text: str, after: str | None, fmt: fim.FimFormat, prompt: fim.FimPrompt,
                  snippets: dict[str, str]) -> list[str]:
    """Each character's region in a text segment, from the FIM token before it and what the segment holds."""
    if after == fmt.prefix:  # (formats without file tokens carry the snippets as comments before the prefix)
        at = text.rfind(prompt.prefix) if prompt.prefix else len(text.rstrip(" "))
        head = "snippet" if prompt.snippets and fmt.file_sep is None else "header"
        return [head] * at + ["prefix"] * (len(text) - at)
    if after == fmt.suffix:
        return ["suffix"] * len(text)
    if text in snippets:
        return ["snippet"] * len(text)
    return ["header"] * len(text)


def suggestion_tokens(engine, generation, suggestion) -> list[int]:
    """The generated tokens that wrote the shown suggestion: those up to the end of its text in the model's text
    (all of them where post-processing changed it beyond cutting, or nothing is shown)."""
    ids, raw = generation.token_ids, generation.text
    kept = suggestion.text.strip() if suggestion is not None else ""
    at = raw.find(kept) if kept else -1
    if at < 0:
        return list(ids)
    end = at + len(kept)
    ends = engine.token_ends(ids)
    return list(ids[: next((k + 1 for k, e in enumerate(ends) if e >= end), len(ids))])


def attention_scores(model, ids: list[int], prompt_len: int) -> np.ndarray:
    """[layers, generated, prompt + generated] attention (mean over heads) of each generated token's producing
    position (the one before it), from one eager forward pass."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=model.device), output_attentions=True, use_cache=False)
    if not out.attentions or out.attentions[0] is None:
        raise ValueError("the model returned no attentions: it needs transformers' eager attention")
    rows = slice(prompt_len - 1, len(ids) - 1)
    return np.stack([layer[0, :, rows, :].float().mean(0).cpu().numpy() for layer in out.attentions])


def explain(location: str, *, model: str | None = None, settings: dict | None = None, device: str = "cpu") -> dict:
    """The completion at FILE:LINE:COL and its attention per prompt line (see the module docstring): JSON-ready."""
    from midline.server.cli import _location, _offset
    from midline.server.completion import Completer
    from midline.server.config import Config
    from midline.server.documents import Document
    from midline.server.server import open_engine

    path, (line, column) = _location(location)
    text = path.read_text(encoding="utf-8")
    offset = _offset(text, line, column)
    config = Config.from_json(settings or {})
    config.model, config.device = model or config.model, device
    config.engine = "torch"  # attentions come from the PyTorch model (llama.cpp returns none)
    if config.backend.kind != "local":
        raise ValueError("attention needs a local model (backend.kind local): a served one returns no attentions")
    engine = open_engine(config)
    doc = Document(path.resolve().as_uri(), languages.resolve(None, str(path)).name, 0, text)
    with ThreadPoolExecutor(max_workers=1) as executor:
        completer = Completer(engine, config, executor, root=str(Path.cwd()))
        completion = asyncio.run(completer.complete(doc, offset))
    if completion.prompt is None or completion.generation is None:
        raise ValueError(f"no completion at {location}: the cursor is inside a word, or completion is off there")
    built, generation = completion.prompt, completion.generation
    if not generation.token_ids:
        raise ValueError(f"the model wrote nothing at {location}")
    tokens_used = suggestion_tokens(engine, generation, completion.suggestion)
    lines, owner = prompt_lines(engine, built, completer.prompts.mode)
    hf = engine.model
    hf.set_attn_implementation("eager")
    prompt_ids = list(built.encoded)
    scores = attention_scores(hf, prompt_ids + tokens_used, len(prompt_ids))  # [L, G, P + G]
    layers, generated = scores.shape[0], scores.shape[1]
    per_line = np.zeros((layers, generated, len(lines)))
    owner_array = np.array(owner)
    for index in range(len(lines)):
        per_line[:, :, index] = scores[:, :, : len(prompt_ids)][:, :, owner_array == index].sum(-1)
    special = scores[:, :, : len(prompt_ids)][:, :, owner_array == -1].sum(-1)  # [L, G]
    to_generated = scores[:, :, len(prompt_ids) :].sum(-1)
    by_layer = per_line.mean(1)  # [L, lines]: averaged over generated tokens
    overall = by_layer.mean(0)
    tokens = [engine.tokenizer.decode([t], skip_special_tokens=False) for t in tokens_used]
    suggestion = completion.suggestion
    return {
        "file": str(path), "line": line, "column": column, "model": str(config.model or "default"),
        "fim_format": engine.fim.name, "suggestion": suggestion.text if suggestion else None,
        "generated": generation.text, "generated_tokens": tokens, "layers": layers,
        "prompt_tokens": len(prompt_ids),
        "lines": [{**line_info, "overall": round(float(overall[i]), 5),
                   "per_layer": [round(float(v), 5) for v in by_layer[:, i]]} for i, line_info in enumerate(lines)],
        "regions": {region: round(float(sum(overall[i] for i, li in enumerate(lines) if li["region"] == region)), 5)
                    for region in REGIONS},
        "special": round(float(special.mean()), 5), "to_generated": round(float(to_generated.mean()), 5),
        "per_token": [[round(float(v), 5) for v in per_line[:, g, :].mean(0)] for g in range(generated)],
    }


def plot(report: dict, out: Path) -> None:
    """A heat map: a row per prompt line, a column per layer and the mean, the regions in a strip beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    lines = report["lines"]
    grid = np.array([[*line["per_layer"], line["overall"]] for line in lines])
    height = max(3.0, 0.16 * len(lines) + 1.6)
    fig, (strip, heat) = plt.subplots(1, 2, figsize=(3.2 + 0.45 * grid.shape[1] + 4.2, height),
                                      gridspec_kw={"width_ratios": [0.4, grid.shape[1]]}, sharey=True)
    strip.imshow([[to_rgb(REGIONS[line["region"]])] for line in lines], aspect="auto", interpolation="nearest")
    strip.set_xticks([])
    strip.set_yticks(range(len(lines)))
    strip.set_yticklabels([line["label"] for line in lines], fontsize=6, family="monospace")
    image = heat.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest")
    heat.set_xticks(range(grid.shape[1]))
    heat.set_xticklabels([*(str(i + 1) for i in range(grid.shape[1] - 1)), "mean"], fontsize=7)
    heat.set_xlabel("layer")
    fig.colorbar(image, ax=heat, label="share of a generated token's attention (mean over heads and tokens)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for color in REGIONS.values()]
    suggestion = (report["suggestion"] or report["generated"]).replace("\n", "\\n")[:80]
    heat.legend(handles, list(REGIONS), loc="upper left", bbox_to_anchor=(0.0, -0.6 / height * 2), ncol=4,
                fontsize=7, frameon=False, title="region (the strip left of the map)", title_fontsize=7)
    fig.suptitle(f"{Path(report['file']).name}:{report['line']}:{report['column']}  ->  {suggestion!r}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    plt.close(fig)


# -- command line ---------------------------------------------------------------------------------


def add_parser(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `attention` subcommand."""
    p = stages.add_parser("attention", help="what the model looks at for the completion at FILE:LINE:COL: attention "
                                            "per prompt line, as a PNG heat map and JSON")
    p.add_argument("location", help="FILE:LINE:COL, 1-based (as `midline complete`)")
    p.add_argument("--model", help="local model directory (default: the server's default model)")
    p.add_argument("--settings", default="{}", help="JSON object of server settings, as in the editor's")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write (the JSON goes beside it)")
    p.set_defaults(run=run)
    return p


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as exc:
        parser.error(f"--settings is not JSON: {exc}")
    report = explain(args.location, model=args.model, settings=settings, device=args.device)
    plot(report, args.out)
    write_json(args.out.with_suffix(".json"), report, indent=1)
    top = sorted(report["lines"], key=lambda line: -line["overall"])[:5]
    print(f"suggestion: {report['suggestion']!r}; {len(report['generated_tokens'])} generated tokens, "
          f"{report['layers']} layers; attention by region: "
          + ", ".join(f"{k} {v:.2f}" for k, v in report["regions"].items())
          + f", FIM tokens {report['special']:.2f}, generated {report['to_generated']:.2f}")
    for line in top:
        print(f"  {line['overall']:.3f}  {line['region']:<7} {line['label']}")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0
