#!/usr/bin/env bash
# The atlas (docs/ATLAS-PLAN.md): its four cells, one study at a time on this machine, the
# cheaper task first. Every study resumes where it stopped, so after an interruption (a session
# ending, a reboot) the same command goes on:
#
#   nohup tools/atlas.sh >> runs/atlas.log 2>&1 &
#
# Each finished study is exported (records, no weights) to docs/results/placement-<model>-<task>
# for committing; a study stopped part-way can be exported by hand with `loraplace export` at
# any time. Task 2 is the task screen's choice (docs/results/task-screen/); as no candidate
# qualified, the plan puts its verdicts on eval loss, so its studies get the report key
# `report.verdicts_on: loss` once their runs are done (a report key, which a study may change
# when it resumes: no run changes).
set -euo pipefail
cd "$(dirname "$0")/.."
TASK2=tweet-sentiment
for cell in "smollm2-135m $TASK2" "gemma3-270m $TASK2" "smollm2-135m gsm8k" "gemma3-270m gsm8k"; do
    read -r model task <<<"$cell"
    echo "$(date -u '+%F %T') atlas: $model, $task: start"
    .venv/bin/loraplace study --preset placement --model "$model" --dataset "$task"
    dir="runs/placement-$model-$task"
    if [ "$task" = "$TASK2" ]; then
        .venv/bin/python -c 'import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
config.setdefault("report", {})["verdicts_on"] = "loss"
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)' "$dir/study.yaml" "runs/.atlas-$model-$task.yaml"
        .venv/bin/loraplace study "runs/.atlas-$model-$task.yaml" --out "$dir"
    fi
    .venv/bin/loraplace export "$dir" "docs/results/placement-$model-$task"
    echo "$(date -u '+%F %T') atlas: $model, $task: done"
done
