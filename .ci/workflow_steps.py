"""Print, as one bash script, the `run:` blocks of a GitHub workflow's steps whose id starts with
`normlab-`: the user CI recipe's own commands, run by CI exactly as users will copy them."""

import sys

import yaml

workflow = yaml.safe_load(open(sys.argv[1]))
steps = [s for job in workflow["jobs"].values() for s in job["steps"] if str(s.get("id", "")).startswith("normlab-")]
if not steps:
    sys.exit(f"{sys.argv[1]}: no step with an id starting with normlab-")
for s in steps:
    print(f"echo '--- {s['id']}: {s['name']}'")
    print(s["run"])
