# Sourced by make.sh: every stage trains on the same procedural world.
world() {  # world OUT N SEED [SIZE]: export N world images (train split, SIZE px, default 128) unless already there
  [ -f "$1/instructions.jsonl" ] || python -m minigpt4.world export --out "$1" --n "$2" --size "${4:-128}" --format jpg \
    --seed "$3" --kinds scene,dish,sketch,prompt --weights 4,2,2,2
}
drills() {  # drills WORLD: the attribute-question drills of an export (WORLD/qa-attr.jsonl) unless already there
  [ -f "$1/qa-attr.jsonl" ] || python -m minigpt4.world drill "$1/data.jsonl" --out "$1/qa-attr.jsonl"
}
unnamed() {  # unnamed RECORDS TRUTH OUT: RECORDS with some kinds unnamed ("thing" in the answers and regions) unless done
  [ -f "$3" ] || [ -f "$3/filter_cap.json" ] || python -m minigpt4.world unname "$1" --truth "$2" --out "$3"
}
