#!/bin/sh
# Install uv (the one tool this project needs) for the current user, without root and without
# touching the system Python:  sh install_uv.sh
#
# 1. uv already on PATH: nothing to do.
# 2. A private venv (~/.local/share/snac48/uv-venv) with uv pip-installed into it; only `uv` and `uvx`
#    are linked into ~/.local/bin, so the venv's python3 never shadows the system one. Works with a
#    Debian/Ubuntu system Python that refuses `pip install` (PEP 668), given python3-venv.
# 3. Else pip --user (--break-system-packages: it installs one self-contained binary).
# 4. Else uv's standalone installer (needs https://astral.sh), which also installs to ~/.local/bin.
# Then, when ~/.local/bin is not on the PATH of a new shell, one line is added to ~/.bashrc (and
# ~/.profile) so that uv is there in every new terminal. Behind a TLS-intercepting proxy: see README.
set -eu
bin="$HOME/.local/bin"
venv="${XDG_DATA_HOME:-$HOME/.local/share}/snac48/uv-venv"
say() { printf '%s\n' "install_uv: $*"; }

if command -v uv >/dev/null 2>&1; then
    say "uv is already installed: $(command -v uv) ($(uv --version))"
    exit 0
fi
mkdir -p "$bin"
if [ -x "$bin/uv" ]; then
    say "uv is in $bin but not on PATH"
elif python3 -m venv "$venv" >/dev/null 2>&1 && "$venv/bin/python" -m pip install --quiet uv; then
    ln -sf "$venv/bin/uv" "$venv/bin/uvx" "$bin/"
    say "uv installed in a private venv ($venv), linked into $bin"
elif python3 -m pip install --quiet --user --break-system-packages uv >/dev/null 2>&1 \
        || python3 -m pip install --quiet --user uv >/dev/null 2>&1; then
    say "uv installed with pip --user"
elif command -v curl >/dev/null 2>&1 && curl -LsSf https://astral.sh/uv/install.sh | env UV_NO_MODIFY_PATH=1 sh; then
    say "uv installed with its standalone installer"
else
    say "could not install uv: no python3 venv/pip and no curl. On Debian/Ubuntu: sudo apt install python3-venv (or pipx: sudo apt install pipx && pipx install uv), then rerun" >&2
    exit 1
fi
# a new terminal must find it: Debian's ~/.profile adds ~/.local/bin only when it existed at login
line='case ":$PATH:" in *":$HOME/.local/bin:"*) ;; *) export PATH="$HOME/.local/bin:$PATH" ;; esac  # uv (snac48 install_uv.sh)'
for rc in "$HOME/.bashrc" "$HOME/.profile"; do
    if ! grep -qs 'snac48 install_uv.sh' "$rc"; then
        printf '%s\n' "$line" >> "$rc"
        say "added ~/.local/bin to PATH in $rc"
    fi
done
"$bin/uv" --version >/dev/null 2>&1 || { say "uv was installed but $bin/uv does not run" >&2; exit 1; }
case ":$PATH:" in
    *":$bin:"*) say "done: $("$bin/uv" --version)" ;;
    *) say "done: $("$bin/uv" --version). In this terminal run: export PATH=\"\$HOME/.local/bin:\$PATH\" (new terminals have it)" ;;
esac
