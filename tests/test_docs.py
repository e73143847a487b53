"""The docs against the code: man pages' option lists against the argument
parsers, vrf.conf(5) against the parser's keywords, the README's named
files, tests and functions against the tree, its line counts, versions and
the two install descriptions (setup.cfg, Makefile). Pure reads: no root,
no kernel objects."""

import argparse
import ast
import configparser
import contextlib
import fnmatch
import functools
import io
import os
import re
import tokenize

import pytest

from pam_vrf import cli, policy, session, sockspec
from pam_vrf.helper import main as helper_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


# --- roff ------------------------------------------------------------------

def plain(roff):
    """Roff source as text: font escapes gone, \\- as -, \\e as \\."""
    text = re.sub(r"\\f[BIRP]|\\:|\\&", "", roff)
    return text.replace("\\-", "-").replace("\\e", "\\").replace("\\(aq", "'")


def sections(page):
    """{'.SH title': body} of a man page, titles without quotes."""
    parts = re.split(r'^\.SH +"?([^"\n]*)"?\n', read(page), flags=re.M)
    return {title: body for title, body in zip(parts[1::2], parts[2::2])}


def tagged(body):
    """The tag line of every .TP paragraph in `body`, as text."""
    return [plain(m) for m in re.findall(r"^\.TP\n(.*)$", body, flags=re.M)]


def long_options(text):
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))


# --- argparse --------------------------------------------------------------

def argparse_options(parser):
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--")} - {"--help"}


def subcommands(parser):
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def helper_parser_options():
    """pam-vrf-helper builds its parser inside main(): read it from --help."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        helper_main.main(["--help"])
    assert done.value.code == 0
    usage = out.getvalue().split("\n\n")[0]
    return long_options(usage) - {"--help"}


# --- pam-vrf(8) ------------------------------------------------------------

def man_synopsis_by_command():
    """{'check': {'--config', ...}} from pam-vrf(8)'s SYNOPSIS."""
    found = {}
    for entry in plain(sections("doc/pam-vrf.8")["SYNOPSIS"]).split(".br"):
        words = re.findall(r"^\.B pam-vrf (\S+)", entry, flags=re.M)
        assert len(words) == 1, entry
        found[words[0]] = long_options(entry)
    return found


def test_pam_vrf_man_page_synopsis_is_the_parser():
    parser = cli.parser()
    expected = {name: argparse_options(p) for name, p in subcommands(parser).items()}
    assert man_synopsis_by_command() == expected


def test_pam_vrf_man_page_commands_section_is_the_parser():
    documented = {}
    for tag in tagged(sections("doc/pam-vrf.8")["COMMANDS"]):
        name = re.match(r"\.B (\S+)", tag)
        if name:
            documented[name.group(1)] = long_options(tag)
    parser = cli.parser()
    assert documented == {name: argparse_options(p) for name, p in subcommands(parser).items()}


def test_readme_commands_table_is_the_parser():
    """Every command has a row; a row names only options the command has."""
    rows = re.findall(r"^\| `(pam-vrf(?:-helper)? ?[^`]*)` \|", read("README.md"), flags=re.M)
    parser = cli.parser()
    commands = subcommands(parser)
    seen = set()
    for row in rows:
        if row.startswith("pam-vrf-helper"):
            assert long_options(row) <= helper_parser_options(), row
            continue
        name = row.split()[1]
        assert name in commands, row
        assert long_options(row) <= argparse_options(commands[name]), row
        seen.add(name)
    assert seen == set(commands)
    assert any(row.startswith("pam-vrf-helper") for row in rows)


def test_pam_vrf_man_page_doctor_checks_are_the_code():
    """DOCTOR's list of checks is every check name doctor's modules report."""
    documented = {plain(tag).split()[1] for tag in tagged(sections("doc/pam-vrf.8")["DOCTOR"])
                  if re.match(r"\.B \S+$", plain(tag))}
    in_code = set()
    for name in os.listdir(os.path.join(REPO, "pam_vrf", "doctor")):
        if name.endswith(".py"):
            source = read(f"pam_vrf/doctor/{name}")
            in_code |= set(re.findall(r'(?:Finding\(|_guarded\(\w+, )"([a-z-]+)"', source))
    assert in_code - {"root"} == documented      # "root": not a check, the warning that most were skipped


def test_every_install_placeholder_is_replaced():
    """@NAME@ in a man page or unit is one `make install` fills in."""
    known = set(re.findall(r"s\|(@[A-Z]+@)\|", read("Makefile")))
    for folder in ("doc", "helper"):
        for name in os.listdir(os.path.join(REPO, folder)):
            used = set(re.findall(r"@[A-Z]+@", read(f"{folder}/{name}")))
            assert used <= known, (name, used - known)


# --- pam-vrf-helper(8) -----------------------------------------------------

def bold_words(line):
    """The literal (bold) arguments of a .B/.BI/.IB/.BR/.RB line."""
    found = re.match(r"^\.(BI|IB|BR|RB|B)\s+(.*)$", line)
    if not found:
        return []
    macro, rest = found.groups()
    args = re.findall(r'"([^"]*)"|(\S+)', plain(rest).replace("\\(aq", "'"))
    args = [quoted or bare for quoted, bare in args]
    if macro == "B":
        return [" ".join(args)]
    return [arg for i, arg in enumerate(args) if (i % 2 == 0) == (macro in ("BI", "BR"))]


def test_helper_man_page_log_lines_are_the_code():
    """Every literal piece of a message pam-vrf-helper(8) LOGGING lists is
    text the code writes."""
    pieces = []
    for folder, _, files in os.walk(os.path.join(REPO, "pam_vrf")):
        for name in files:
            if name.endswith(".py"):
                tree = ast.parse(read(os.path.relpath(os.path.join(folder, name), REPO)))
                pieces += [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    corpus = "\0".join(pieces)

    def written(text):
        # or the end of one string and the start of another (a message put together)
        halves = ((text[:i].strip(), text[i:].strip()) for i, ch in enumerate(text) if ch == " ")
        return text in corpus or any(any(p.rstrip().endswith(a) for p in pieces)
                                     and any(p.lstrip().startswith(b) for p in pieces) for a, b in halves)

    missing = []
    for line in sections("doc/pam-vrf-helper.8")["LOGGING"].splitlines():
        for words in bold_words(line):
            for piece in re.split(r":\s", words):
                piece = piece.strip(" ;,.:()'")
                if len(piece) >= 5 and not written(piece):
                    missing.append((piece, line))
    assert missing == []


def test_helper_man_page_options_are_the_parser():
    page = sections("doc/pam-vrf-helper.8")
    options = helper_parser_options()
    assert long_options(plain(page["SYNOPSIS"])) == options
    documented = set()
    for tag in tagged(page["OPTIONS"]):
        documented |= long_options(tag)
    assert documented - {"--help"} == options


# --- pam_vrf(8): the pam_python entry's arguments ----------------------------
# (the C module's against pam_vrf(8): tests/test_c_python_agree.py)

def test_pam_python_entry_takes_the_documented_arguments():
    options = set()
    for tag in tagged(sections("doc/pam_vrf.8")["OPTIONS"]):
        options |= set(re.findall(r"^\.BI? ([a-z_]+=?)", tag))
    assert options == {name + ("" if name == "debug" else "=") for name in session.Options.__slots__}
    parsed = session.parse_options(["config=/c", "socket=/s", "debug"])
    assert (parsed.config, parsed.socket, parsed.debug) == ("/c", "/s", True)


# --- vrf.conf(5) -----------------------------------------------------------

def test_vrf_conf_man_page_options_are_the_parser():
    page = sections("doc/vrf.conf.5")
    documented = set()
    for tag in tagged(page["OPTIONS"]):
        documented |= set(re.findall(r"^\.BI? ([a-z]+)(?:=|$| )", tag))
    assert documented == set(policy._FLAGS) | set(policy._VALUED)
    # The parser's own error message lists the same words.
    with pytest.raises(policy.ConfigError) as e:
        policy.parse("* default nosuchoption\n", "t")
    for word in documented:
        assert word in str(e.value)


def test_vrf_conf_man_page_deny_items_are_the_parser():
    deny = plain(sections("doc/vrf.conf.5")["DENY ITEMS"])
    for name in list(sockspec.FAMILIES) + list(sockspec.TYPES) + list(sockspec.PROTOCOLS):
        assert re.search(rf"(?<![\w-]){name}(?![\w-])", deny), f"deny name {name!r} not in vrf.conf(5)"
        sockspec.parse_deny(name if name in sockspec.FAMILIES or name in sockspec.TYPES
                            else f"inet:*:{name}")
    # Every simple item the page offers parses.
    for line in re.findall(r"^\.BR? (.*)$", sections("doc/vrf.conf.5")["DENY ITEMS"], flags=re.M):
        for word in re.findall(r"\b([a-z0-9]+)\b", line.split('"')[0]):
            if word in sockspec.FAMILIES or word in sockspec.TYPES:
                sockspec.parse_deny(word)
    assert f"{sockspec.MAX_DENY}" in plain(read("doc/vrf.conf.5"))


def test_vrf_conf_man_page_limits_are_the_parser():
    page = plain(read("doc/vrf.conf.5"))
    from pam_vrf import netdev
    longest = int(re.search(r"1 to (\d+) printable ASCII", page).group(1))
    assert netdev.check_ifname("v" * longest) is None and netdev.check_ifname("v" * (longest + 1))
    for field, at in {"type": "inet:{}", "protocol": "inet:stream:{}"}.items():
        largest = int(re.search(rf"\.I {field}\b.*?a number up to (\d+)", page, flags=re.S).group(1))
        sockspec.parse_deny(at.format(largest))
        with pytest.raises(ValueError):
            sockspec.parse_deny(at.format(largest + 1))
    assert re.search(rf"at most {sockspec.MAX_DENY} items", page)
    policy.parse(f"* mgmt deny={','.join(['inet'] * sockspec.MAX_DENY)}\n", "t")
    with pytest.raises(policy.ConfigError):
        policy.parse(f"* mgmt deny={','.join(['inet'] * (sockspec.MAX_DENY + 1))}\n", "t")


def test_policy_examples_parse():
    """vrf.conf(5)'s and the README's examples and the sample's commented
    rules are valid policy (the parser `pam-vrf check` and the helper use)."""
    examples = re.findall(r"^\.nf\n(.*?)^\.fi", sections("doc/vrf.conf.5")["EXAMPLES"], flags=re.M | re.S)
    readme = re.search(r"^## vrf\.conf\n.*?```\n(.*?)```", read("README.md"), flags=re.M | re.S).group(1)
    sample = "".join(line[2:] for line in read("pam.d/vrf.conf.sample").splitlines(keepends=True)
                     if re.match(r"# (?!who )([@*]\S*|[a-z][\w.-]*)\s{2,}\S", line))
    texts = [plain(example) for example in examples] + [readme, sample]
    assert len(examples) >= 3 and sample
    for text in texts:
        assert policy.parse(text, "example")


# --- README: files, tests, functions, counts -------------------------------

def readme_code_spans():
    return re.findall(r"`([^`\n]+)`", read("README.md"))


def top_folders():
    """The repository's top-level folders: hidden ones but .ci, and what
    .gitignore names (build products), left out. No git: make check also
    runs from a copy of the tree, and as another user."""
    ignored = [line.strip().strip("/") for line in read(".gitignore").splitlines()
               if line.strip() and not line.startswith("#")]
    return sorted(name for name in os.listdir(REPO)
                  if os.path.isdir(os.path.join(REPO, name))
                  and (name == ".ci" or not name.startswith("."))
                  and not any(fnmatch.fnmatch(name, pattern) for pattern in ignored))


TOP = top_folders()


def test_readme_named_files_exist():
    pattern = re.compile(rf"^(?:{'|'.join(map(re.escape, TOP))})/[\w./-]*$")
    named = set()
    for span in readme_code_spans():
        for word in span.split():
            if pattern.match(word):
                named.add(word)
    assert len(named) > 20
    assert [p for p in sorted(named) if not os.path.exists(os.path.join(REPO, p))] == []


def readme_test_names(doc="README.md"):
    return set(re.findall(r"(?<![\w/])(test_[a-z0-9_]+?)(?:\.py)?\b", read(doc)))


def host_and_vm_test_files():
    found = {}
    for folder in ("tests", "tests/vm"):
        for name in os.listdir(os.path.join(REPO, folder)):
            if re.match(r"test_.*\.py$", name):
                found[name[:-3]] = f"{folder}/{name}"
    return found


def test_readme_named_tests_exist():
    files = host_and_vm_test_files()
    policy_glob = {"test_policy"}      # `test_policy*.py`
    assert sorted(readme_test_names() - set(files) - policy_glob) == []


def test_readme_names_every_host_test_file():
    """A new test file gets a line in the README's Tests section."""
    named = readme_test_names() | {"test_policy_fuzz"}      # `test_policy*.py`
    host = sorted(name for name, path in host_and_vm_test_files().items() if path.startswith("tests/test_"))
    assert [name for name in host if name not in named] == []


def test_vagrant_readme_names_every_vm_test_file():
    """vagrant/README.md's table of tests/vm: every test file, and only those."""
    files = host_and_vm_test_files()
    named = {name for name in readme_test_names("vagrant/README.md") if name.startswith(("test_vm_", "test_smoke"))}
    vm = {name for name, path in files.items() if path.startswith("tests/vm/")}
    assert sorted(vm - named) == [] and sorted(named - vm) == []


@functools.lru_cache(maxsize=None)
def definitions(path):
    names = set()
    for node in ast.walk(ast.parse(read(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        names.add(leaf.id)
    return names


def package_modules():
    """{'sockspec': 'pam_vrf/sockspec.py', 'bpf.sockprog': ..., 'pam_vrf.bpf.sockprog': ...}."""
    found = {}
    for folder, _, files in os.walk(os.path.join(REPO, "pam_vrf")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.relpath(os.path.join(folder, name), REPO)
                dotted = path[:-3].replace("/", ".").removesuffix(".__init__")
                parts = dotted.split(".")
                for i in range(len(parts)):
                    found.setdefault(".".join(parts[i:]), path)
    return found


FILE_SUFFIXES = {"so", "py", "c", "conf", "json", "sock", "md", "service", "socket", "scope", "slice",
                 "procs", "threads", "sample", "sh", "deb", "d", "example"}
# Functions of the kernel, libc, libpam, bcc and the standard library the docs name.
EXTERNAL_CALLS = {"close", "connect", "getaddrinfo", "inet_create", "__cgroup_bpf_run_filter_sk", "socket",
                  "sendmsg", "setuid", "pam_open_session", "getgrall", "getgrouplist", "open_by_handle_at",
                  "pidfd_open", "bind", "recvmsg", "recv", "write", "getpwnam", "getgrent", "getXXbyYY_r",
                  "dev_valid_name", "int", "perf_buffer_poll", "listen", "stat", "bpf_get_current_pid_tgid",
                  "bpf_get_current_uid_gid", "bpf_get_current_cgroup_id", "bpf_ktime_get_ns", "isspace", "dlerror",
                  "rcu_sync_enter", "exec"}


class Names:
    """What the code defines: module.name references and bare name() calls."""

    def __init__(self):
        self.modules = package_modules()
        self.everywhere = set(EXTERNAL_CALLS)
        for path in set(self.modules.values()):
            self.everywhere |= definitions(path)
        self.everywhere |= set(re.findall(r"^\w[\w *]*?\b(\w+)\(", read("pam_module/pam_vrf.c"), flags=re.M))

    def call_exists(self, name):
        return name in self.everywhere

    def reference_exists(self, ref):
        """pam_vrf.bpf.sockprog.build, sockspec.denied_by: True; False when the
        module is ours and lacks the name; None when it is not about our modules."""
        parts = ref.split(".")
        if parts[-1] in FILE_SUFFIXES:
            return None
        for i in range(len(parts), 0, -1):
            module = ".".join(parts[:i])
            if module in self.modules:
                return set(parts[i:i + 1]) <= definitions(self.modules[module]) | self.submodules(module)
        return None

    def submodules(self, module):
        full = self.modules[module][:-3].replace("/", ".").removesuffix(".__init__")
        return {name[len(full) + 1:].split(".")[0] for name in self.modules if name.startswith(full + ".")}


DOCS = ["README.md", "helper/README.md", "bpf/README.md", "pam.d/README.md",
        "pam_module/README.md", "vagrant/README.md"]


@pytest.mark.parametrize("doc", DOCS)
def test_named_python_functions_exist(doc):
    """`module.name`, `pam_vrf.module.name()` and `name()` in the docs name
    something the code defines (a bare name(): anywhere in pam_vrf/ or the C
    module, or a known function of the kernel or a library)."""
    names = Names()
    wrong = []
    for span in re.findall(r"`([^`\n]+)`", read(doc)):
        for name, call in re.findall(r"(?<![\w./-])([a-z_][\w.]*?)(\(\))?(?![\w./-])", span):
            if "." not in name and call and not names.call_exists(name):
                wrong.append(span)
            if "." in name and names.reference_exists(name) is False:
                wrong.append(span)
    assert wrong == [], wrong


def comments_and_docstrings(path):
    """(line, text) of every comment and docstring-like string of a Python file."""
    source = read(path)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT or (
                token.type == tokenize.STRING and token.string.lstrip("rRbBuUfF").startswith(('"""', "'''"))):
            yield token.start[0], token.string


def test_code_comments_name_functions_that_exist():
    """A comment or docstring in pam_vrf/ or pam.d/ that names `name()` or
    `module.name` of this package names something that is still there."""
    names = Names()
    wrong = []
    for path in sorted(set(names.modules.values())) + ["pam.d/pam_vrf.py"]:
        for line, text in comments_and_docstrings(path):
            for dotted, name in re.findall(r"(?<![\w.])((?:[A-Za-z_]\w*\.)*)([a-z_]\w*)\(\)", text):
                if not dotted and not names.call_exists(name):
                    wrong.append(f"{path}:{line}: {name}()")
            for ref in re.findall(r"(?<![\w./-])((?:pam_vrf\.)?[a-z_]\w*(?:\.[A-Za-z_]\w*)+)", text):
                if names.reference_exists(ref) is False:
                    wrong.append(f"{path}:{line}: {ref}")
    assert wrong == [], wrong


def test_readme_line_counts():
    """'~N lines of C' is the module's size within 15 %."""
    claims = re.findall(r"~(\d+) lines of C", read("README.md"))
    assert claims
    actual = read("pam_module/pam_vrf.c").count("\n")
    for claim in map(int, claims):
        assert abs(actual - claim) <= 0.15 * claim, f"README says ~{claim} lines of C, pam_vrf.c has {actual}"


def test_readme_instruction_counts():
    """The program sizes the README gives are what the builders emit."""
    from pam_vrf.bpf import egressprog, sockprog
    text = read("README.md")
    binding = int(re.search(r"sock-create: (\d+) instructions for a binding", text).group(1))
    assert binding == len(sockprog.build(sockprog.Settings(ifindex=4))) // 8
    egress = int(re.search(r"egress: ~(\d+)\)", text).group(1))
    for devices in ([4], [4, 5]):
        assert abs(len(egressprog.build(devices, 3)) // 8 - egress) <= 2
    assert f"egressprog.py`, ~{egress} instructions" in text


def test_readme_where_things_are_names_every_folder():
    text = read("README.md")
    section = re.search(r"^## Where things are\n(.*?)(?=^## )", text, flags=re.M | re.S)
    assert section, "README has no 'Where things are' section"
    rows = re.findall(r"^\| `([^`]+)/` \|([^\n]*)", section.group(1), flags=re.M)
    assert sorted(folder for folder, _ in rows) == TOP
    for folder, row in rows:
        assert os.path.isdir(os.path.join(REPO, folder)), folder
        for path in re.findall(r"`((?:tests|testlab|bench|vagrant|tools)/[\w./-]*)`", row):
            assert os.path.exists(os.path.join(REPO, path.rstrip("*"))), (folder, path)


# --- one version, one product ----------------------------------------------

def test_one_version_everywhere():
    from pam_vrf import __version__
    debian = re.match(r"pam-vrf \(([^)-]+)", read("debian/changelog")).group(1)
    assert debian == __version__
    for page in sorted(os.listdir(os.path.join(REPO, "doc"))):
        th = re.search(r'^\.TH .*"pam-vrf ([^"]+)"', read(f"doc/{page}"), flags=re.M)
        assert th and th.group(1) == __version__, page


def makefile_scripts():
    """{'pam-vrf': 'pam_vrf.cli:main', ...} as `make install` writes them."""
    found = {}
    for module, target in re.findall(r"from (pam_vrf[\w.]*) import main.*?\$\(DESTDIR\)\$\(\w+\)/([\w-]+)$",
                                      read("Makefile"), flags=re.M):
        found[target] = f"{module}:main"
    return found


def test_setup_cfg_is_the_product_make_install_ships():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    scripts = dict(line.replace(" ", "").split("=") for line in
                   cfg["options.entry_points"]["console_scripts"].strip().splitlines())
    assert scripts == makefile_scripts() and set(scripts) == {"pam-vrf", "pam-vrf-helper"}
    # find: takes only folders with an __init__.py; make install copies them all.
    for folder, dirs, files in os.walk(os.path.join(REPO, "pam_vrf")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if any(f.endswith(".py") for f in files):
            assert "__init__.py" in files, folder
    # The .deb's pyroute2 is a requirement of pip's install too.
    assert "pyroute2" in cfg["options"]["install_requires"]
    assert "python3-pyroute2" in read("debian/control")


def test_make_install_installs_every_man_page_and_unit():
    makefile = read("Makefile")
    for page in os.listdir(os.path.join(REPO, "doc")):
        assert re.search(rf"for page in [^;]*\b{re.escape(page)}\b", makefile), page
    for name in os.listdir(os.path.join(REPO, "helper")):
        if name != "README.md":
            assert f"helper/{name}" in makefile, name
