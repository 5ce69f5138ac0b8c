"""Stable error codes shared by the guest agent, the engine, the HTTP API and the SDK.

A code is part of Ember's public contract: clients branch on it, so a code is never
renamed or reused for another meaning. The guest reports the codes it can know
about (files, processes, REPL); the host adds the ones about sandboxes and VMs.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    # Request shape and transport.
    INVALID_REQUEST = "invalid_request"
    PROTOCOL_ERROR = "protocol_error"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNKNOWN_OPERATION = "unknown_operation"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"
    # HTTP routing: no route at that path, or none for that method there.
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # No Ember answer to go by: no daemon reached (the SDK's own), or an HTTP failure of no
    # more specific kind (a proxy's page in front of the daemon, the framework's own refusal).
    DAEMON_UNREACHABLE = "daemon_unreachable"
    HTTP_ERROR = "http_error"
    # Files inside the guest.
    FILE_NOT_FOUND = "file_not_found"
    NOT_A_DIRECTORY = "not_a_directory"
    IS_A_DIRECTORY = "is_a_directory"
    ALREADY_EXISTS = "already_exists"
    DIRECTORY_NOT_EMPTY = "directory_not_empty"
    PERMISSION_DENIED = "permission_denied"
    DISK_FULL = "disk_full"
    IO_ERROR = "io_error"
    # Processes, terminals and REPL contexts inside the guest.
    PROCESS_NOT_FOUND = "process_not_found"
    CONTEXT_NOT_FOUND = "context_not_found"
    EXEC_FAILED = "exec_failed"
    EXEC_TIMEOUT = "exec_timeout"
    # Sandboxes and their VMs, on the host.
    UNAUTHORIZED = "unauthorized"
    KEY_NOT_FOUND = "key_not_found"
    SANDBOX_NOT_FOUND = "sandbox_not_found"
    TEMPLATE_NOT_FOUND = "template_not_found"
    SNAPSHOT_NOT_FOUND = "snapshot_not_found"
    SNAPSHOT_INCOMPATIBLE = "snapshot_incompatible"
    TEMPLATE_BUILD_FAILED = "template_build_failed"
    SANDBOX_NOT_RUNNING = "sandbox_not_running"
    SANDBOX_DEAD = "sandbox_dead"
    BOOT_FAILED = "boot_failed"
    AGENT_UNAVAILABLE = "agent_unavailable"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    QUOTA_EXCEEDED = "quota_exceeded"
    IMAGES_MISSING = "images_missing"
    VMM_ERROR = "vmm_error"
    ISOLATION_UNAVAILABLE = "isolation_unavailable"
    # Sandbox networks and exposed ports, on the host.
    NETWORK_DISABLED = "network_disabled"
    PORT_NOT_EXPOSED = "port_not_exposed"
    PORT_UNREACHABLE = "port_unreachable"
    NETWORK_ERROR = "network_error"
    # OCI images imported as templates, on the host.
    IMAGE_NOT_FOUND = "image_not_found"
    IMAGE_INVALID = "image_invalid"
    IMAGE_UNSUPPORTED = "image_unsupported"
    IMAGE_DIGEST_MISMATCH = "image_digest_mismatch"
    IMAGE_UNSAFE_PATH = "image_unsafe_path"
    IMAGE_TOO_LARGE = "image_too_large"
    REGISTRY_UNAUTHORIZED = "registry_unauthorized"
    REGISTRY_ERROR = "registry_error"
    # run_code in an image that has no python3 (the agent runs on its own interpreter).
    PYTHON_UNAVAILABLE = "python_unavailable"
    # Many hosts (ember.cluster).
    CLUSTER_UNAVAILABLE = "cluster_unavailable"
    HOST_UNAVAILABLE = "host_unavailable"
