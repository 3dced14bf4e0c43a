#!/usr/bin/env bash
# How midline's default model is made: every midline-train stage, with the choices its card records.
#
#   training/default_model.sh WORK [OUT]     WORK: scratch space; OUT: the exported model (default model/default)
#
# 1. corpus and tokenizer (the Python files of this environment, a 16k byte-level BPE);
# 2. an ablation, unless ABLATE=0: two short runs side by side on the same GPU, FIM holes at random
#    characters (`--holes chars`) vs where editors ask (`--holes ast`), each evaluated on the same held-out
#    infilling tasks and editor positions; the recipe with the better exact first line over the editor
#    positions (`midline-train positions`) wins;
# 3. the long run with the winning recipe, its evaluations, and the export (the ablation table goes into the
#    model card).
# Every stage resumes where it stopped: after a kill, run the same command again.
set -euo pipefail
work=${1:?usage: training/default_model.sh WORK [OUT]}
out=${2:-model/default}
PRESET=${PRESET:-28m}           # model shape (training/train.py PRESETS)
TOKENS=${TOKENS:-5e8}           # tokens seen by the long run
VOCAB=${VOCAB:-16384}
ABLATE=${ABLATE:-1}
ABLATION_PRESET=${ABLATION_PRESET:-20m}
ABLATION_TOKENS=${ABLATION_TOKENS:-1e8}
ABLATION_ARGS=${ABLATION_ARGS:---warmup-steps 60}
HOLES=${HOLES:-ast}              # FIM hole recipe, used when ABLATE=0 (chars or ast: training/data.py)
OPTIMIZER=${OPTIMIZER:-muon}     # chosen by the first ablation (the card's "Recipe choices")
SOURCES=${SOURCES:-}             # corpus sources (default: this Python's stdlib and site-packages)
PER_KIND=${PER_KIND:-100}       # evaluation tasks per kind
TRAIN_ARGS=${TRAIN_ARGS:-}      # extra flags for every training run (smoke tests: a small batch)
DATA_ARGS=${DATA_ARGS:-}        # extra flags for the data stage (smoke tests: a short --seq-len)
EVAL="--per-kind $PER_KIND --max-new-tokens 128"
mkdir -p "$work"
stage() { echo "== $(date +%T) $*" >&2; }

stage corpus
midline-train corpus --out "$work/corpus" ${SOURCES:+--sources $SOURCES}
stage tokenizer
midline-train tokenizer --corpus "$work/corpus" --vocab-size "$VOCAB" --out "$work/tokenizer"

data() {  # data DIR HOLES
  [ -f "$1/meta.json" ] && grep -q '"complete": true' "$1/meta.json" && return
  midline-train data --corpus "$work/corpus" --tokenizer "$work/tokenizer" --out "$1" --holes "$2" $DATA_ARGS >"$1.log" 2>&1
}
run() {  # run NAME PRESET TOKENS HOLES OPTIMIZER [TRAIN FLAGS]: train, then evaluate on the shared task files
  local dir="$work/$1"
  data "$work/data-$4" "$4"
  midline-train train --data "$work/data-$4" --out "$dir" --preset "$2" --tokens "$3" --optimizer "$5" $TRAIN_ARGS ${6:-} >"$dir.log" 2>&1
  midline-train evaluate --model "$dir/model" --corpus "$work/corpus" --tasks "$work/tasks.jsonl" $EVAL --out "$dir/eval.json" >"$dir.eval.log" 2>&1
  midline-train positions --model "$dir/model" --corpus "$work/corpus" --tasks "$work/positions.tasks.jsonl" --per-kind "$PER_KIND" \
    --out "$dir/positions.json" >"$dir.positions.log" 2>&1
}
score() {  # exact first line over the editor positions
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics"]["overall"]["exact_first_line"])' "$1"
}

if [ "$ABLATE" = 1 ]; then
  stage ablation data
  data "$work/data-chars" chars & data "$work/data-ast" ast & wait
  stage "ablation runs ($ABLATION_PRESET, $ABLATION_TOKENS tokens each, side by side)"
  midline-train evaluate --corpus "$work/corpus" --tasks "$work/tasks.jsonl" $EVAL --tasks-only
  midline-train positions --corpus "$work/corpus" --tasks "$work/positions.tasks.jsonl" --per-kind "$PER_KIND" --tasks-only
  run ablate-chars "$ABLATION_PRESET" "$ABLATION_TOKENS" chars "$OPTIMIZER" "$ABLATION_ARGS" &
  run ablate-ast "$ABLATION_PRESET" "$ABLATION_TOKENS" ast "$OPTIMIZER" "$ABLATION_ARGS" &
  wait
  {
    echo "| run | FIM holes | first line: col 0 / indented / line end / mid-line / all | harmful | evaluate exact (single / multi / span) | val nats/token |"
    echo "|---|---|---|---|---|---|"
    for holes in chars ast; do
      python3 - "$work/ablate-$holes" "$holes" <<'EOF'
import json, sys
run, holes = sys.argv[1], sys.argv[2]
p = json.load(open(f"{run}/positions.json"))["metrics"]; r = json.load(open(f"{run}/eval.json")); m = r["metrics"]
first = " / ".join(f"{p[k]['exact_first_line']:.3f}" for k in ("enter_col0", "enter_indented", "end_of_line_next", "mid_line", "overall"))
em = " / ".join(f"{m[k]['exact_match']:.3f}" for k in ("single_line", "multi_line", "random_span"))
loss = r["loss"]["nats_per_token"] if r.get("loss") else float("nan")
print(f"| ablate-{holes} | {holes} | {first} | {p['overall']['harmful_rate']:.3f} | {em} | {loss:.3f} |")
EOF
    done
  } >"$work/ablation.md"
  cat "$work/ablation.md" >&2
  if python3 -c 'import sys; sys.exit(float(sys.argv[1]) < float(sys.argv[2]))' "$(score "$work/ablate-ast/positions.json")" "$(score "$work/ablate-chars/positions.json")"; then
    HOLES=ast
  else
    HOLES=chars
  fi
fi

name="run-$PRESET-$HOLES-$OPTIMIZER"
stage "long run $name: $TOKENS tokens"
run "$name" "$PRESET" "$TOKENS" "$HOLES" "$OPTIMIZER"
stage export
midline-train export --run "$work/$name" --out "$out" --corpus "$work/corpus" --data "$work/data-$HOLES" \
  --eval "$work/$name/eval.json" --command "PRESET=$PRESET TOKENS=$TOKENS ABLATE=$ABLATE HOLES=$HOLES training/default_model.sh WORK"
if [ -f "$work/ablation.md" ]; then
  printf '\n## Recipe choices, measured\n\nShort runs side by side (%s, %s tokens each), the same held-out tasks:\n\n' \
    "$ABLATION_PRESET" "$ABLATION_TOKENS" >>"$out/README.md"
  cat "$work/ablation.md" >>"$out/README.md"
  printf '\nChosen: FIM holes %s, %s.\n' "$HOLES" "$OPTIMIZER" >>"$out/README.md"
fi
stage done
