"""User docs stay true: the flag table lists every flag with its default, and the commands the
docs show name things that exist."""

import pathlib
import re

from absl import flags

from scalable_agent2 import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
USAGE = ROOT / 'docs' / 'USAGE.md'


def _defined_flags() -> dict[str, str]:
    fv = flags.FlagValues()
    cli.define_flags(fv)
    return {name: ("''" if fv[name].default == '' else str(fv[name].default)) for name in fv}


def _table_flags(text: str) -> dict[str, str]:
    table = text.split('<!-- flags:begin -->', 1)[1].split('<!-- flags:end -->', 1)[0]
    rows = re.findall(r'^\| `--(\w+)` \| `([^`]*)` \|', table, re.M)
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), 'a flag is listed twice'
    return dict(rows)


def _row(name: str, default: str) -> str:
    return f'| `--{name}` | `{default}` | ... |'


def test_flag_table_lists_every_flag_with_its_default():
    defined = _defined_flags()
    documented = _table_flags(USAGE.read_text())
    missing = [_row(k, v) for k, v in defined.items() if k not in documented]
    assert not missing, 'flags missing from docs/USAGE.md, add rows:\n' + '\n'.join(missing)
    stale = sorted(set(documented) - set(defined))
    assert not stale, f'docs/USAGE.md lists flags that cli.py does not define: {stale}'
    wrong = {k: (documented[k], defined[k]) for k in defined if documented[k] != defined[k]}
    assert not wrong, f'defaults differ (docs, cli.py): {wrong}'


def test_table_parser_sees_a_missing_flag():
    text = USAGE.read_text().replace('| `--seed` | `1` |', '| `--not_a_flag` | `1` |')
    documented = _table_flags(text)
    assert 'seed' not in documented and 'not_a_flag' in documented


def test_docker_steps_in_the_docs_exist():
    text = USAGE.read_text()
    script = (ROOT / 'docker' / 'build_dmlab.sh').read_text()
    steps = set(re.findall(r'`build_dmlab\.sh (\w+)`', text))
    assert steps == {'python', 'dmlab', 'dataset', 'runtime', 'package', 'smoke'}
    for step in steps:
        assert f'step_{step}() {{' in script
    for arg in re.findall(r'^\| `([A-Z_]+)`', text, re.M):
        assert f'ARG {arg}=' in (ROOT / 'Dockerfile').read_text()


def test_documented_modules_and_files_exist():
    text = USAGE.read_text()
    for module in set(re.findall(r'python -m (scalable_agent2\.\w+)', text)):
        assert (ROOT / (module.replace('.', '/') + '.py')).is_file(), module
    for path in set(re.findall(r'\]\(\.\./([\w./]+)\)', text)):
        assert (ROOT / path).exists(), path
    assert 'experiments/experiment.py' in text and (ROOT / 'experiments/experiment.py').is_file()
