"""The header of imsasm's save stream names what it holds: a group or server directory whose
users are on several partitions is labelled with every partition (``*``), not with the
first user's; imsrestore reads such a stream and prints its header."""

from __future__ import annotations

import json

from conftest import run_cmd
from test_imsasm_cli import setup_tree


def test_header_of_a_directory_spanning_partitions(fresh_store, tmp_path):
    config, _, user_dir = setup_tree(fresh_store, tmp_path)
    server = user_dir.parent.parent
    partitions = fresh_store / "partitions"

    def homes(group_dir):
        return {p.name for u in group_dir.iterdir() if u.is_dir()
                for p in partitions.iterdir() if (p / u.name).is_dir()}

    mixed = next(g for g in sorted(server.iterdir()) if len(homes(g)) > 1)
    single = next(g for g in sorted(server.iterdir()) if len(homes(g)) == 1)
    expected = {mixed: f"/*/{mixed.name}", single: f"/{homes(single).pop()}/{single.name}",
                server: "/*", user_dir: f"/primary/{user_dir.parent.name}/{user_dir.name}"}
    for directory, name in expected.items():
        archive = tmp_path / f"{directory.name}.ims"
        archive.write_bytes(run_cmd("imsasm", "-s", str(directory), config_dir=config,
                                    check_rc=0).stdout)
        header = json.loads(run_cmd("imsrestore", "-h", "-f", str(archive), config_dir=config,
                                    check_rc=0).stdout)
        assert header["names"] == [name], directory

    # imsrestore reads the mixed group's stream: users of both partitions, each in its own
    listed = run_cmd("imsrestore", "-t", "-f", str(tmp_path / f"{mixed.name}.ims"),
                     config_dir=config, check_rc=0).stdout.decode()
    for user in (u.name for u in mixed.iterdir() if u.is_dir()):
        home = next(p.name for p in partitions.iterdir() if (p / user).is_dir())
        assert f"/{home}/" in listed and user in listed
