"""local.store.backup.exclude against the names given: a folder named in full is taken with
its subfolders; a wider name leaves an excluded subfolder out."""

from __future__ import annotations

from conftest import run_cmd

from archive_reader import read_archive


def make_folder(maildir, name: str) -> None:
    folder = maildir / ("." + name.replace("/", "."))
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "maildirfolder").touch()
    (folder / "cur" / f"1700000000.M1P1.host,S={len(name)}:2,S").write_bytes(name.encode())


def folders_in(data: bytes) -> set[str]:
    return {m.json()["folder"] for m in read_archive(data).members if m.kind == "folder"}


def test_a_wider_name_leaves_an_excluded_subfolder_out(fresh_store):
    config = fresh_store / "config"
    user_dir = sorted((fresh_store / "partitions" / "primary").iterdir())[0]
    user = user_dir.name
    for name in ("Archive", "Archive/2024", "Archive/2025", "Trash", "Trash/Old"):
        make_folder(user_dir / "Maildir", name)
    run_cmd("configutil", "-o", "local.store.backup.exclude", "-v", "Archive/2024%Trash",
            config_dir=config, check_rc=0)

    def backed_up(name: str) -> set[str]:
        result = run_cmd("imsbackup", "-f", "-", name, config_dir=config)
        assert result.returncode == 0, result.stderr
        return folders_in(result.stdout)

    wider = backed_up(f"/primary/user/{user}/Archive")
    assert wider == {"Archive", "Archive/2025"}
    assert backed_up(f"/primary/user/{user}/Archive/2024") == {"Archive/2024"}
    assert backed_up(f"/primary/user/{user}/Trash") == {"Trash", "Trash/Old"}
    whole_user = backed_up(f"/primary/user/{user}")
    assert {"Archive", "Archive/2025"} <= whole_user
    assert not {"Archive/2024", "Trash", "Trash/Old"} & whole_user
