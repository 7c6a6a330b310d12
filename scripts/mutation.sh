#!/usr/bin/env bash
# Mutation testing of the core modules (issue 16), one module at a time, with mutmut 3.
#
#   scripts/mutation.sh                 # every module below
#   scripts/mutation.sh metrics search  # only these
#   MUTATION_CHILDREN=2 scripts/mutation.sh metrics
#
# Each module runs in a scratch copy of the repository (src/, tests/, pyproject.toml) whose
# [tool.mutmut] section is narrowed to that module and the tests that exercise it, so the
# runs do not share state and mutants/ never lands in the working tree. Prints one line per
# module: killed / total = score, then the surviving mutants (inspect one with
# `cd $MUTATION_WORK/<module> && mutmut show <name>`). A measured benchmark, not a test:
# it takes minutes to hours; record the date and the scores in docs/testing.md.
set -euo pipefail

# module name | file to mutate | tests that exercise it (space-separated)
MODULES=(
  "metrics|src/resedis/metrics.py|tests/test_metrics.py tests/test_boundaries.py"
  "search|src/resedis/search.py|tests/test_search.py tests/test_boundaries.py tests/test_threshold_source.py"
  "search_corpus|src/resedis/search_corpus.py|tests/test_search_corpus_mutants.py"
  "thresholds|src/resedis/thresholds.py|tests/test_thresholds_mutants.py"
  "security|src/resedis/server/security.py|tests/server/test_security.py tests/server/test_image_id_guard.py"
  "parser|src/resedis/expressions/parser.py|tests/expressions/test_expressions.py tests/expressions/test_parser.py"
  "index_commit|src/resedis/index/commit.py|tests/index/test_commit.py"
  "index_session|src/resedis/index/session.py|tests/index/test_session.py"
)

repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${MUTATION_WORK:-${TMPDIR:-/tmp}/resedis-mutation}"
children="${MUTATION_CHILDREN:-1}"
python -c "import mutmut" 2>/dev/null || { echo "mutmut is not installed: pip install mutmut==3.8.1" >&2; exit 2; }

wanted=("$@")
summary=()
for entry in "${MODULES[@]}"; do
  IFS='|' read -r name file tests <<<"$entry"
  if ((${#wanted[@]})) && [[ ! " ${wanted[*]} " == *" $name "* ]]; then continue; fi
  dir="$work/$name"
  rm -rf "$dir" && mkdir -p "$dir"
  cp -r "$repo/src" "$repo/tests" "$repo/pyproject.toml" "$dir/"
  find "$dir" -name __pycache__ -prune -exec rm -rf {} +
  existing=()
  for t in $tests; do [[ -e "$repo/$t" ]] && existing+=("\"$t\""); done
  selection="$(IFS=,; echo "${existing[*]}")"
  python - "$dir/pyproject.toml" "$file" "$selection" <<'PY'
import re, sys
path, file, selection = sys.argv[1:]
text = open(path).read()
text = re.sub(r"^only_mutate = .*$", f'only_mutate = ["{file}"]', text, flags=re.M)
text = re.sub(r"^pytest_add_cli_args_test_selection = .*$", f"pytest_add_cli_args_test_selection = [{selection}]", text, flags=re.M)
open(path, "w").write(text)
PY
  echo "== $name: mutating $file against ${existing[*]}" >&2
  (cd "$dir" && unset PYTHONPATH && HF_HUB_OFFLINE=1 python -m mutmut run --max-children "$children" >"$dir/run.log" 2>&1) || {
    echo "mutmut failed for $name; see $dir/run.log" >&2; tail -20 "$dir/run.log" >&2; continue; }
  (cd "$dir" && python -m mutmut results --all true >"$dir/results.txt" 2>&1) || true
  line="$(python - "$dir/results.txt" "$name" <<'PY'
import collections, sys
path, name = sys.argv[1:]
counts = collections.Counter()
survivors = []
for raw in open(path):
    if ":" not in raw:
        continue
    mutant, status = (s.strip() for s in raw.rsplit(":", 1))
    if not mutant.startswith("resedis"):
        continue
    counts[status] += 1
    if status == "survived":
        survivors.append(mutant)
total = sum(counts.values())
killed = counts["killed"] + counts["timeout"]
score = 100.0 * killed / total if total else float("nan")
detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
print(f"{name}: {killed}/{total} killed = {score:.1f}% ({detail})")
for s in survivors:
    print(f"    survived: {s}")
PY
)"
  echo "$line"
  summary+=("$(head -1 <<<"$line")")
done
echo "== mutation scores $(date -u +%Y-%m-%d) (mutmut $(python -c 'import importlib.metadata as m; print(m.version("mutmut"))'))"
printf '%s\n' "${summary[@]}"
