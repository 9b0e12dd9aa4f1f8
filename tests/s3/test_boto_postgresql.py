"""test_boto's S3 tests again, with the namespace in PostgreSQL (``[meta] engine = "postgresql"``).

The functions are test_boto's own, collected here a second time against this
module's ``s3d`` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import pg
from tests.conftest import Daemon, free_port
from tests.s3 import test_boto
from tests.s3.conftest import _serve

globals().update({name: fn for name, fn in vars(test_boto).items() if name.startswith("test_")})


@pytest.fixture(scope="module")
def s3d(tmp_path_factory: pytest.TempPathFactory, pg_server: pg.PgServer) -> Iterator[Daemon]:
    schema = "s3_boto_postgresql"
    dsn = pg_server.fresh_schema(schema)
    d = Daemon(
        tmp_path_factory.mktemp("s3pg") / "var",
        free_port(),
        s3_conf='domain = "s3.localhost"',
        meta_conf=f'engine = "postgresql"\ndsn = "{dsn}"\n',
    )
    try:
        yield from _serve(d)
    finally:
        pg_server.drop_schema(schema)
