"""The Apache Kafka broker's jars: resolved once from Maven Central into a cache folder, or taken from KAFKA_HOME.

The broker is the `org.apache.kafka:kafka_2.13` artifact; Maven resolves its runtime dependencies. slf4j-simple
(matching Kafka's slf4j-api 1.7) makes the broker log to its stdout, which the sandbox sends to a log file.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
from collections.abc import Callable

from sidecar.config import DevSettings
from sidecar.dev import procs
from sidecar.errors import SandboxError

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>kafka-mesh.sandbox</groupId><artifactId>kafka-broker</artifactId><version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{version}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId><version>1.7.36</version></dependency>
  </dependencies>
</project>
"""

Progress = Callable[[str], None]


def classpath(settings: DevSettings, progress: Progress) -> str:
    """The broker's Java classpath; resolves the jars with Maven on first use."""
    if settings.kafka_home is not None:
        libs = settings.kafka_home / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise SandboxError(f"KAFKA_HOME={settings.kafka_home} has no libs/kafka_2.13-*.jar: "
                               "not a Kafka distribution")
        return f"{libs}/*"
    if shutil.which(settings.java_bin) is None:
        raise SandboxError(f"Java was not found ({settings.java_bin!r}); install a JDK 17 "
                           "(apt-get install openjdk-17-jre-headless)")
    home = settings.cache_dir / f"kafka-{settings.kafka_version}"
    libs = home / "libs"
    if not (home / ".complete").exists():
        _resolve(settings, home, progress)
    return f"{libs}/*"


def _resolve(settings: DevSettings, home: pathlib.Path, progress: Progress) -> None:
    resolve_jars(settings, home, _POM.format(version=settings.kafka_version), "org.apache.kafka:kafka_2.13",
                 "kafka_2.13-*.jar", f"Apache Kafka {settings.kafka_version} jars", progress)


def resolve_jars(settings: DevSettings, home: pathlib.Path, pom: str, artifact: str, marker: str, what: str,
                 progress: Progress) -> None:
    """Resolve pom's runtime dependencies with Maven into home/libs (home/.complete once done): the broker's jars,
    or another Kafka tool's (MirrorMaker 2 for the benchmarks). marker: a glob of libs/ that proves artifact came."""
    if shutil.which(settings.mvn_bin) is None:
        raise SandboxError("Maven (mvn) was not found; install it (apt-get install maven) "
                           "or set KAFKA_HOME to an unpacked Apache Kafka distribution")
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(pom)
    libs = home / "libs"
    if libs.exists():
        shutil.rmtree(libs)
    log = home / "maven.log"
    progress(f"resolving {what} with Maven (first run only; log: {log})")
    argv = [settings.mvn_bin, "-B", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
    downloaded = 0
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=procs.server_env())
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.startswith("Downloaded from"):
                downloaded += 1
                if downloaded % 25 == 0:
                    progress(f"  downloaded {downloaded} files")
        code = proc.wait()
    if code != 0 or not any(libs.glob(marker)):
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        print(tail, file=sys.stderr)
        raise SandboxError(f"Maven could not resolve {artifact}:{settings.kafka_version} (exit {code}); full log: "
                           f"{log}")
    (home / ".complete").write_text(settings.kafka_version + "\n")
    progress(f"  {sum(1 for _ in libs.glob('*.jar'))} jars in {libs}")
