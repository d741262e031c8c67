"""`python -m engine.sizing --config llama-3.1-8b --weights bf16,int4-g128 --kv int8`: see engine.sizing.cli."""

from engine.sizing.cli import main

raise SystemExit(main())
