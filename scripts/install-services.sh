#!/usr/bin/env bash
# Install the brokers that the integration tests and the demo run locally:
# Mosquitto and openssl from Debian, and the jars of an Apache Kafka 4.x
# broker from Maven Central. Safe to run again: each step is skipped when its
# result is already there.
#
# Usage: scripts/install-services.sh [all|mosquitto]   (default all; `mosquitto`
# skips Java, Maven and the Kafka jars, which is all the demo needs)
#
# Environment:
#   POLICY_SYNC_CACHE          cache folder (default ~/.cache/policy-sync)
#   POLICY_SYNC_KAFKA_VERSION  Kafka version to resolve (default 4.4.0)
#
# The Kafka jars go to $POLICY_SYNC_CACHE/kafka-<version>/libs, outside the
# repository. scripts/services.sh looks for them in the same place.
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_dir="${POLICY_SYNC_CACHE:-$HOME/.cache/policy-sync}"
kafka_version="${POLICY_SYNC_KAFKA_VERSION:-4.4.0}"
kafka_home="$cache_dir/kafka-$kafka_version"
kafka_libs="$kafka_home/libs"
target="${1:-all}"
case "$target" in
    all | mosquitto) ;;
    *)
        echo "usage: scripts/install-services.sh [all|mosquitto]" >&2
        exit 2
        ;;
esac

log() {
    echo "install-services: $*" >&2
}

# Install the Debian packages that are missing, running `apt-get update`
# only when there is something to install.
install_debian_packages() {
    local missing=()
    command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
    command -v mosquitto_passwd >/dev/null 2>&1 || missing+=(mosquitto)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    if [[ "$target" == all ]]; then
        command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
        command -v mvn >/dev/null 2>&1 || missing+=(maven)
    fi

    if ((${#missing[@]} == 0)); then
        log "Debian packages already installed"
        return
    fi

    # Remove duplicates (mosquitto can be listed twice).
    local packages
    packages="$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"

    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        sudo=(sudo)
    fi
    # Where an init system runs, the Debian package also starts a system-wide
    # Mosquitto on port 1883. scripts/services.sh uses other ports and leaves
    # that instance alone.
    log "installing Debian packages: $packages"
    "${sudo[@]}" apt-get update -qq
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends $packages >/dev/null
}

# Copy the Kafka broker jars with their runtime dependencies into the cache.
install_kafka_jars() {
    if [[ -f "$kafka_libs/kafka_2.13-$kafka_version.jar" && -f "$kafka_home/.complete" ]]; then
        log "Kafka $kafka_version jars already in $kafka_libs"
        return
    fi

    log "resolving Kafka $kafka_version jars into $kafka_libs"
    local staging="$kafka_home/libs.partial"
    rm -rf "$staging"
    mkdir -p "$staging"
    local mvn_log="$kafka_home/mvn.log"
    if ! mvn -B -Dstyle.color=never -f "$repo_dir/scripts/kafka/pom.xml" \
        -Dkafka.version="$kafka_version" \
        dependency:copy-dependencies \
        -DincludeScope=runtime \
        -DoutputDirectory="$staging" >"$mvn_log" 2>&1; then
        tail -n 40 "$mvn_log" >&2
        log "resolving the Kafka jars with Maven failed; full output in $mvn_log"
        exit 1
    fi

    # Swap the folder in whole, so an interrupted run never leaves a partial
    # set of jars that looks complete.
    rm -rf "$kafka_libs"
    mv "$staging" "$kafka_libs"
    touch "$kafka_home/.complete"
    log "Kafka jars: $(find "$kafka_libs" -name '*.jar' | wc -l) files"
}

install_debian_packages
if [[ "$target" == all ]]; then
    install_kafka_jars
fi
log "done"
