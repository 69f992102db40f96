#!/usr/bin/env python3
"""Checks rendered Kubernetes manifests against the "restricted" Pod Security Standard (rules of v1.25).

Usage: pss_restricted.py FILE... ("-" reads standard input)

Every Pod template (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job,
CronJob, PodTemplate) is checked the way Pod Security Admission at level "restricted", version v1.25, checks
a Pod. Restricted includes baseline, so both levels' controls are here:

  baseline:   no hostNetwork/hostPID/hostIPC, no Windows hostProcess, no privileged container, no hostPath
              volume, no hostPort, AppArmor only runtime/default or localhost/*, SELinux type only
              container_t/container_init_t/container_kvm_t and no user/role, procMount only Default, only
              the safe sysctls, seccomp never Unconfined.
  restricted: volumes only of the types configMap, csi, downwardAPI, emptyDir, ephemeral,
              persistentVolumeClaim, projected, secret (image volumes are allowed only from v1.33);
              allowPrivilegeEscalation false on every container; runAsNonRoot true at pod level (and
              not false on a container) or on every container; runAsUser never 0; seccompProfile
              RuntimeDefault or Localhost at pod level or on every container; capabilities drop ALL and
              add at most NET_BIND_SERVICE.

A Pod whose spec.os.name is "windows" is exempt from the allowPrivilegeEscalation, seccomp and capabilities
controls, as in v1.25. Each violation is printed as "[FILE: ]Kind/name: where: what" (FILE when there are
several); the exit code is 1 if there is any, 2 if a file cannot be read, 0 otherwise.
"""

import sys

import yaml

ALLOWED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}
# The sysctls that baseline allows at v1.25 (later versions add more: clusters down to 1.25 refuse those).
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
}
ALLOWED_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t"}
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def pod_templates(obj):
    """Yields (metadata, pod spec) for each Pod template an object holds."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        yield obj.get("metadata") or {}, spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job"):
        template = spec.get("template") or {}
        yield template.get("metadata") or {}, template.get("spec") or {}
    elif kind == "CronJob":
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        yield template.get("metadata") or {}, template.get("spec") or {}
    elif kind == "PodTemplate":
        template = obj.get("template") or {}
        yield template.get("metadata") or {}, template.get("spec") or {}


def check_pod(meta, spec):
    """Returns the violations of one Pod template, as strings."""
    bad = []
    psc = spec.get("securityContext") or {}
    windows = ((spec.get("os") or {}).get("name")) == "windows"
    containers = [
        (field, c)
        for field in ("initContainers", "containers", "ephemeralContainers")
        for c in (spec.get(field) or [])
    ]

    # --- baseline ---
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad.append(f"pod: {field} must be unset or false")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        bad.append("pod: securityContext.windowsOptions.hostProcess must be unset or false")
    for vol in spec.get("volumes") or []:
        types = [k for k in vol if k != "name"]
        if "hostPath" in types:
            bad.append(f"volume {vol.get('name')}: hostPath volumes are forbidden")
        elif not types or any(t not in ALLOWED_VOLUME_TYPES for t in types):
            bad.append(f"volume {vol.get('name')}: type {','.join(types) or '(none)'} is not allowed "
                       f"(only {', '.join(sorted(ALLOWED_VOLUME_TYPES))})")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            bad.append(f"pod: sysctl {sysctl.get('name')} is not in the safe set")
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
                value == "runtime/default" or str(value).startswith("localhost/")):
            bad.append(f"pod: annotation {key}={value}: AppArmor must be runtime/default or localhost/*")

    def check_apparmor(where, sc):
        profile = (sc.get("appArmorProfile") or {}).get("type")
        if profile is not None and profile not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{where}: appArmorProfile.type {profile} must be RuntimeDefault or Localhost")

    def check_selinux(where, sc):
        opts = sc.get("seLinuxOptions") or {}
        if opts.get("type", "") not in ALLOWED_SELINUX_TYPES:
            bad.append(f"{where}: seLinuxOptions.type {opts.get('type')} is not allowed")
        for field in ("user", "role"):
            if opts.get(field):
                bad.append(f"{where}: seLinuxOptions.{field} must be unset")

    check_apparmor("pod", psc)
    check_selinux("pod", psc)

    # --- restricted, pod level ---
    if psc.get("runAsUser") == 0:
        bad.append("pod: securityContext.runAsUser must not be 0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ("RuntimeDefault", "Localhost") and not windows:
        bad.append(f"pod: seccompProfile.type {pod_seccomp} must be RuntimeDefault or Localhost")
    pod_non_root = psc.get("runAsNonRoot") is True

    for field, c in containers:
        where = f"{field[:-1]} {c.get('name')}"
        sc = c.get("securityContext") or {}
        # --- baseline ---
        if sc.get("privileged"):
            bad.append(f"{where}: privileged must be unset or false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad.append(f"{where}: windowsOptions.hostProcess must be unset or false")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                bad.append(f"{where}: port {port.get('name') or port.get('containerPort')} must not set hostPort")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{where}: procMount must be unset or Default")
        check_apparmor(where, sc)
        check_selinux(where, sc)
        # --- restricted ---
        if not windows and sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{where}: allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            bad.append(f"{where}: runAsNonRoot must be true (on the pod or on every container)")
        if sc.get("runAsUser") == 0:
            bad.append(f"{where}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if not windows:
            if seccomp is not None and seccomp not in ("RuntimeDefault", "Localhost"):
                bad.append(f"{where}: seccompProfile.type {seccomp} must be RuntimeDefault or Localhost")
            elif seccomp is None and pod_seccomp is None:
                bad.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost "
                           "(on the pod or on every container)")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                bad.append(f"{where}: capabilities.drop must include ALL")
            extra = [cap for cap in caps.get("add") or [] if cap != "NET_BIND_SERVICE"]
            if extra:
                bad.append(f"{where}: capabilities.add may hold only NET_BIND_SERVICE, not {', '.join(extra)}")
    return bad


def objects(doc):
    if isinstance(doc, dict) and doc.get("kind") == "List":
        for item in doc.get("items") or []:
            yield from objects(item)
    elif isinstance(doc, dict):
        yield doc


def main(argv):
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    violations = 0
    checked = 0
    for path in argv:
        try:
            text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
            docs = list(yaml.safe_load_all(text))
        except (OSError, yaml.YAMLError) as e:
            print(f"pss_restricted: cannot read {path}: {e}", file=sys.stderr)
            return 2
        for doc in docs:
            for obj in objects(doc):
                name = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
                if len(argv) > 1:
                    name = f"{path}: {name}"
                for meta, spec in pod_templates(obj):
                    checked += 1
                    for problem in check_pod(meta, spec):
                        violations += 1
                        print(f"{name}: {problem}")
    print(f"pss_restricted: {checked} pod template(s) checked, {violations} violation(s)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
