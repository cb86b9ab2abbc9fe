"""Offline checks of infra/: no Bicep CLI or subscription here, so every template is parsed with
pycep-parser and the policies of the deployment (issue 14, section 1) are asserted on the parsed
properties, with the app settings compared against what shared_code/config.py reads.

pycep gives identifiers and string literals alike as plain strings; :func:`resolve` looks a
string up among the template's variables and parameters, which is what an identifier would be.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from shared_code.config import SECRET_SETTINGS, ConfigurationError, Settings
from shared_code.secrets import key_vault_secret_name

pytestmark = pytest.mark.infra

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
MODULES = (
    "alerts",
    "function",
    "identity",
    "keyvault",
    "monitoring",
    "postgres",
    "rbac",
    "servicebus",
    "storage",
)
QUEUES = {"inbound-events", "outbound-messages"}
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Built-in role definitions (same id in every tenant) the app's identity may hold.
ALLOWED_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39": "Azure Service Bus Data Sender",
    "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0": "Azure Service Bus Data Receiver",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}
FORBIDDEN_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "090c5cfd-751d-490a-894a-3ce6f1109419": "Azure Service Bus Data Owner",
    "00482a5a-887f-4fb3-b363-3b7fe8e74483": "Key Vault Administrator",
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": "Key Vault Secrets Officer",
}

# Settings the Functions host (not shared_code/config.py) reads.
HOST_SETTINGS = {
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "ServiceBusConnection__fullyQualifiedNamespace",
    "ServiceBusConnection__credential",
    "ServiceBusConnection__clientId",
    "AZURE_CLIENT_ID",  # azure-identity's ManagedIdentityCredential reads it too
}

# Default max_connections per PostgreSQL Flexible Server SKU (Azure's "Limits" page).
SKU_MAX_CONNECTIONS = {
    "Standard_B1ms": 50,
    "Standard_B2s": 429,
    "Standard_B2ms": 859,
    "Standard_D2ds_v5": 859,
    "Standard_D4ds_v5": 1718,
}


@cache
def template(name: str) -> dict[str, Any]:
    path = INFRA / "main.bicep" if name == "main" else INFRA / "app" / f"{name}.bicep"
    parsed: dict[str, Any] = BicepParser().parse(file_path=path)
    return parsed


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource's properties block, under its condition (``if``) or loop (``for``) if any."""
    config: dict[str, Any] = resource["config"]
    while "config" in config and ("condition" in config or "loop_type" in config):
        config = config["config"]
    return config


def resources(name: str, resource_type: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (symbol, resource)
        for symbol, resource in template(name).get("resources", {}).items()
        if resource["type"].lower() == resource_type.lower() and not resource["existing"]
    ]


def single(name: str, resource_type: str) -> dict[str, Any]:
    found = resources(name, resource_type)
    assert len(found) == 1, f"{name}.bicep: expected one {resource_type}, found {len(found)}"
    return body(found[0][1])


def resolve(name: str, value: Any) -> Any:
    """The value an identifier stands for (a variable's value, a parameter's default)."""
    parsed = template(name)
    if isinstance(value, str):
        if value in parsed.get("variables", {}):
            return resolve(name, parsed["variables"][value]["value"])
        if value in parsed.get("parameters", {}):
            return parsed["parameters"][value]["default"]
    return value


def is_parameter(name: str, value: Any) -> bool:
    return isinstance(value, str) and value in template(name).get("parameters", {})


def properties(config: dict[str, Any]) -> dict[str, Any]:
    return {key.lower(): value for key, value in config.get("properties", {}).items()}


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def dotted(value: Any) -> Any:
    """``identity.outputs.clientId`` for pycep's nested property accessors, else the value."""
    if isinstance(value, dict) and value.get("operator", {}).get("type") == "property_accessor":
        operands = value["operator"]["operands"]
        return f"{dotted(operands['operand_1'])}.{dotted(operands['operand_2'])}"
    return value


def identifiers_in(value: Any) -> set[str]:
    """Every name a value may refer to: bare strings and ${...} interpolations."""
    names: set[str] = set()
    for item in walk(value):
        if isinstance(item, str):
            names.add(item)
            names.update(re.findall(r"\$\{([A-Za-z_]\w*)", item))
    return names


def app_setting_names() -> set[str]:
    return set(single("function", "Microsoft.Web/sites/config")["properties"])


def evaluate(name: str, value: Any, overrides: dict[str, int]) -> int:
    """An integer expression of literals, + and *, variables and parameters (their defaults)."""
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if value in overrides:
            return overrides[value]
        resolved = resolve(name, value)
        assert resolved is not value and resolved is not None, f"{value} has no value"
        return evaluate(name, resolved, overrides)
    operator = value["operator"]
    left, right = (evaluate(name, operand, overrides) for operand in operator["operands"].values())
    return {"add": left + right, "multiply": left * right}[operator["type"]]


# ---- every file parses, and the wiring between them holds ----


def test_every_bicep_file_is_parsed_and_the_layout_is_split_by_concern() -> None:
    files = sorted(INFRA.rglob("*.bicep"))
    assert {path.stem for path in (INFRA / "app").glob("*.bicep")} == set(MODULES)
    assert not list(INFRA.rglob("*.bicepparam")), "pycep cannot read .bicepparam files"
    for path in files:
        parsed = BicepParser().parse(file_path=path)
        assert parsed.get("resources") or parsed.get("modules"), path


def test_main_passes_each_module_exactly_the_parameters_it_declares() -> None:
    main = template("main")
    assert main["globals"]["scope"]["value"] == "subscription"
    used = set()
    for symbol, module in main["modules"].items():
        path = module["detail"]["path"]
        assert path.startswith("./app/"), f"{symbol}: local modules only ({path})"
        name = Path(path).stem
        used.add(name)
        declared = template(name)["parameters"]
        passed = set(body(module).get("params", {}))
        required = {param for param, spec in declared.items() if spec["default"] is None}
        assert passed <= set(declared), f"{symbol}: unknown parameters {passed - set(declared)}"
        assert required <= passed, f"{symbol}: missing parameters {required - passed}"
    assert used == set(MODULES)


def test_main_parameters_json_maps_azd_environment_values_onto_main_parameters() -> None:
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = template("main")["parameters"]
    assert set(parameters) <= set(declared)
    required = {param for param, spec in declared.items() if spec["default"] is None}
    assert required <= set(parameters), f"azd would not fill {required - set(parameters)}"
    for name, entry in parameters.items():
        assert re.fullmatch(r"\$\{[A-Z_]+(=[^}]*)?\}", entry["value"]), name


def test_azure_yaml_deploys_the_repository_root_as_a_python_function_app() -> None:
    import yaml

    config = yaml.safe_load((REPO_ROOT / "azure.yaml").read_text())
    assert config["services"] == {"api": {"project": ".", "language": "python", "host": "function"}}
    tags = body(resources("function", "Microsoft.Web/sites")[0][1])["tags"]
    assert "api" in identifiers_in(tags), "azd finds the app by its azd-service-name tag"


# ---- function app ----


def test_function_app_is_flex_consumption_python_311_https_only() -> None:
    plan = single("function", "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True
    (_, site_resource), *others = resources("function", "Microsoft.Web/sites")
    assert not others
    assert site_resource["api_version"] >= "2023-12-01"
    site = body(site_resource)
    assert site["kind"] == "functionapp,linux"
    assert site["identity"]["type"] == "UserAssigned"
    props = site["properties"]
    assert props["httpsOnly"] is True
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert is_parameter("function", storage["authentication"]["userAssignedIdentityResourceId"])
    scale = config["scaleAndConcurrency"]
    assert is_parameter("function", scale["instanceMemoryMB"])
    assert is_parameter("function", scale["maximumInstanceCount"])


def test_one_user_assigned_identity_is_used_by_everything() -> None:
    identities = [
        (name, symbol)
        for name in ("main", *MODULES)
        for symbol, _ in resources(name, "Microsoft.ManagedIdentity/userAssignedIdentities")
    ]
    assert identities == [("identity", "identity")]
    main_modules = template("main")["modules"]
    for module, parameter, output in (
        ("rbac", "principalId", "principalId"),
        ("postgres", "administratorIdentityPrincipalId", "principalId"),
        ("postgres", "administratorIdentityName", "name"),
        ("functionApp", "identityId", "id"),
        ("functionApp", "identityClientId", "clientId"),
        ("functionApp", "identityName", "name"),
    ):
        passed = dotted(body(main_modules[module])["params"][parameter])
        assert passed == f"identity.outputs.{output}", (module, parameter)


# ---- Service Bus ----


def test_service_bus_queues_are_session_ordered_deduplicated_and_not_partitioned() -> None:
    namespace = single("servicebus", "Microsoft.ServiceBus/namespaces")
    assert namespace["sku"]["name"] == "Standard"
    assert namespace["properties"]["disableLocalAuth"] is True
    [(_, queue_resource)] = resources("servicebus", "Microsoft.ServiceBus/namespaces/queues")
    loop = queue_resource["config"]["loop_type"]["detail"]
    names = {resolve("servicebus", item) for item in resolve("servicebus", loop["array_name"])}
    assert names == QUEUES
    queue = body(queue_resource)["properties"]
    assert queue["enablePartitioning"] is False
    assert queue["requiresSession"] is True
    assert queue["requiresDuplicateDetection"] is True
    assert queue["duplicateDetectionHistoryTimeWindow"] == "PT10M"
    assert queue["deadLetteringOnMessageExpiration"] is True
    assert is_parameter("servicebus", queue["maxDeliveryCount"])
    assert is_parameter(
        "main", body(template("main")["modules"]["serviceBus"])["params"]["maxDeliveryCount"]
    )


# ---- Key Vault ----


def test_key_vault_uses_rbac_soft_delete_and_purge_protection() -> None:
    vault = properties(single("keyvault", "Microsoft.KeyVault/vaults"))
    assert vault["enablerbacauthorization"] is True
    assert vault["enablesoftdelete"] is True
    assert vault["enablepurgeprotection"] is True
    assert "accesspolicies" not in vault


def test_key_vault_secrets_are_secure_parameters_named_as_the_app_reads_them() -> None:
    parsed = template("keyvault")
    secure = {
        name
        for name, spec in parsed["parameters"].items()
        if any(decorator["type"] == "secure" for decorator in spec["decorators"])
    }
    secrets = {
        body(resource)["name"]: body(resource)["properties"]["value"]
        for _, resource in resources("keyvault", "Microsoft.KeyVault/vaults/secrets")
    }
    assert set(secrets.values()) <= secure, "every secret value comes from a @secure() parameter"
    expected = {
        key_vault_secret_name(setting)
        for setting in (
            "WHATSAPP_ACCESS_TOKEN",
            "WHATSAPP_APP_SECRET",
            "WHATSAPP_WEBHOOK_VERIFY_TOKEN",
            "MANAGEMENT_API_KEYS",
            "MANAGEMENT_API_READ_KEYS",
        )
    }
    assert expected <= set(secrets)
    readable = {key_vault_secret_name(setting) for setting in SECRET_SETTINGS}
    assert set(secrets) <= readable, f"the app never reads {set(secrets) - readable}"


def test_secrets_reach_key_vault_only() -> None:
    main = template("main")
    secure = {
        name
        for name, spec in main["parameters"].items()
        if any(decorator["type"] == "secure" for decorator in spec["decorators"])
    }
    assert len(secure) >= 5
    for symbol, module in main["modules"].items():
        leaked = secure & identifiers_in(body(module).get("params", {}))
        if symbol == "keyVault":
            assert leaked == secure
        else:
            assert not leaked, f"secure parameters passed to {symbol}: {leaked}"


# ---- PostgreSQL ----


def test_postgres_accepts_only_entra_sign_in_with_the_identity_as_administrator() -> None:
    server = single("postgres", "Microsoft.DBforPostgreSQL/flexibleServers")
    auth = server["properties"]["authConfig"]
    assert auth["activeDirectoryAuth"] == "Enabled"
    assert auth["passwordAuth"] == "Disabled"
    assert "administratorLoginPassword" not in server["properties"]
    admin = single("postgres", "Microsoft.DBforPostgreSQL/flexibleServers/administrators")
    assert admin["properties"]["principalType"] == "ServicePrincipal"
    assert is_parameter("postgres", admin["name"])
    assert is_parameter("postgres", admin["properties"]["principalName"])
    firewall = single("postgres", "Microsoft.DBforPostgreSQL/flexibleServers/firewallRules")
    assert firewall["name"] == "AllowAllAzureServicesAndResourcesWithinAzureIps"
    assert firewall["properties"] == {"startIpAddress": "0.0.0.0", "endIpAddress": "0.0.0.0"}
    assert single("postgres", "Microsoft.DBforPostgreSQL/flexibleServers/databases")


def test_max_connections_holds_every_instance_pool_at_the_scale_caps() -> None:
    setting = single("postgres", "Microsoft.DBforPostgreSQL/flexibleServers/configurations")
    assert setting["name"] == "max_connections"
    value = setting["properties"]["value"]["function"]["parameters"]["value_to_convert"]
    expression = template("postgres")["variables"][value]["value"]

    def max_connections(instances: int, pool_size: int) -> int:
        overrides = {"functionMaximumInstanceCount": instances, "databasePoolMaxSize": pool_size}
        return evaluate("postgres", expression, overrides)

    main = template("main")["parameters"]
    instances = main["functionMaximumInstanceCount"]["default"]
    pool_size = main["databasePoolMaxSize"]["default"]
    sized = max_connections(instances, pool_size)
    # Every pool full on every instance, plus the 15 connections Azure reserves.
    assert sized >= instances * pool_size + 15
    assert max_connections(instances * 2, pool_size) > sized, "it follows the instance cap"
    assert max_connections(instances, pool_size + 1) > sized, "it follows the pool size"
    assert sized <= SKU_MAX_CONNECTIONS[main["postgresSkuName"]["default"]]
    # The same two parameters drive the app's scale and pool size.
    function_params = body(template("main")["modules"]["functionApp"])["params"]
    postgres_params = body(template("main")["modules"]["postgres"])["params"]
    for name, postgres_name in (
        ("maximumInstanceCount", "functionMaximumInstanceCount"),
        ("databasePoolMaxSize", "databasePoolMaxSize"),
    ):
        assert function_params[name] == postgres_params[postgres_name]


# ---- storage, monitoring ----


def test_storage_allows_no_shared_key_and_only_tls_12_over_https() -> None:
    account = single("storage", "Microsoft.Storage/storageAccounts")["properties"]
    assert account["allowSharedKeyAccess"] is False
    assert account["allowBlobPublicAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2"
    assert account["supportsHttpsTrafficOnly"] is True
    assert single("storage", "Microsoft.Storage/storageAccounts/blobServices/containers")


def test_application_insights_and_log_analytics_disable_local_auth() -> None:
    insights = properties(single("monitoring", "Microsoft.Insights/components"))
    assert insights["disablelocalauth"] is True
    assert insights["workspaceresourceid"]
    workspace = single("monitoring", "Microsoft.OperationalInsights/workspaces")
    assert workspace["properties"]["features"]["disableLocalAuth"] is True


# ---- role assignments ----


def test_role_assignments_use_named_least_privilege_roles_on_single_resources() -> None:
    text = (INFRA / "app" / "rbac.bicep").read_text()
    variables = template("rbac")["variables"]
    granted = {}
    for symbol, resource in resources("rbac", "Microsoft.Authorization/roleAssignments"):
        config = body(resource)
        role_reference = config["properties"]["roleDefinitionId"]["function"]["parameters"]
        role_variable = role_reference["resource_name_1"]
        assert role_variable in variables, f"{symbol}: role id not in a named variable"
        role_id = variables[role_variable]["value"]
        assert GUID.match(role_id), symbol
        # The variable's line is preceded by a comment naming the role.
        declaration = text.index(f"var {role_variable} =")
        assert text[:declaration].rstrip().splitlines()[-1].lstrip().startswith("//")
        scope = config["scope"]
        assert scope in template("rbac")["resources"], f"{symbol}: scoped to one resource"
        assert template("rbac")["resources"][scope]["existing"] is True
        name = config["name"]["function"]
        assert name["type"] == "guid"
        assert list(name["parameters"].values()) == [
            {
                "operator": {
                    "type": "property_accessor",
                    "operands": {"operand_1": scope, "operand_2": "id"},
                }
            },
            config["properties"]["principalId"],
            role_variable,
        ]
        assert config["properties"]["principalType"] == "ServicePrincipal"
        granted[role_id] = scope
    assert set(granted) <= set(ALLOWED_ROLES), {ALLOWED_ROLES.get(role, role) for role in granted}
    assert set(ALLOWED_ROLES) <= set(granted), "a role the app needs is missing"
    every_text = "\n".join(path.read_text() for path in INFRA.rglob("*.bicep"))
    for role_id, role in FORBIDDEN_ROLES.items():
        assert role_id not in every_text, f"{role} is granted somewhere"


# ---- outputs ----


def test_outputs_are_upper_snake_and_hold_no_secret() -> None:
    main = template("main")
    secure = {
        name
        for name, spec in main["parameters"].items()
        if any(decorator["type"] == "secure" for decorator in spec["decorators"])
    }
    outputs = main["outputs"]
    assert "WHATSAPP_WEBHOOK_CALLBACK_URL" in outputs
    assert outputs["WHATSAPP_WEBHOOK_CALLBACK_URL"]["value"].endswith("/api/v1/whatsapp/webhook")
    for name, output in outputs.items():
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name), name
        assert not re.search(r"SECRET|PASSWORD|TOKEN|CONNECTION_STRING|(?<!VAULT)_KEY", name), name
        assert not secure & identifiers_in(output["value"]), name
    for name in MODULES:
        for output_name, output in template(name).get("outputs", {}).items():
            assert not any(d["type"] == "secure" for d in output["decorators"])
            assert not re.search(r"secret|password|key$|connectionstring", output_name, re.I)
    every_text = "\n".join(path.read_text() for path in INFRA.rglob("*.bicep"))
    assert "listKeys" not in every_text and "listConnectionStrings" not in every_text


# ---- app settings ----


def test_app_settings_connect_by_identity_with_no_key_or_connection_string() -> None:
    settings = single("function", "Microsoft.Web/sites/config")["properties"]
    assert settings["ServiceBusConnection__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    for name in (
        "ServiceBusConnection__clientId",
        "AzureWebJobsStorage__clientId",
        "AZURE_CLIENT_ID",
    ):
        assert settings[name] == "identityClientId", name
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "ClientId=${identityClientId};Authorization=AAD"
    )
    assert settings["BUS_BACKEND"] == "azure"
    assert settings["DATABASE_ENTRA_AUTH"] == "true"
    database_url = settings["DATABASE_URL"]
    assert database_url.startswith("postgresql://${identityName}@")
    assert "sslmode=require" in database_url
    assert not re.search(r"//[^/@]*:[^/@]*@", database_url), "no password in DATABASE_URL"
    # Neither the connection-string forms nor anything that looks like a key.
    assert "ServiceBusConnection" not in settings
    assert "AzureWebJobsStorage" not in settings
    for name, value in settings.items():
        if name != "APPLICATIONINSIGHTS_CONNECTION_STRING":
            assert not re.search(r"connection_?string|password|secret|_key$", name, re.I), name
        rendered = json.dumps(value)
        assert not re.search(r"AccountKey|SharedAccessKey|InstrumentationKey=|listKeys", rendered)
    insights = dotted(settings["APPLICATIONINSIGHTS_CONNECTION_STRING"])
    assert insights == "applicationInsights.properties.ConnectionString"


def names_the_code_reads() -> set[str]:
    """Setting names quoted in shared_code/config.py, and %NAME% binding expressions."""
    config = (REPO_ROOT / "shared_code" / "config.py").read_text()
    names = set(
        re.findall(r'"([A-Z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+|ServiceBusConnection\w*)"', config)
    )
    for trigger in REPO_ROOT.glob("*_function/*.py"):
        names.update(re.findall(r"%(\w+)%", trigger.read_text()))
    return names


def test_bicep_sets_no_setting_that_nothing_reads() -> None:
    unread = app_setting_names() - names_the_code_reads() - HOST_SETTINGS
    assert not unread, f"set by function.bicep, read by nobody: {sorted(unread)}"


def placeholder(value: Any) -> str:
    """A stand-in for a setting's deploy-time value, of the right shape."""
    if isinstance(value, str):
        if is_parameter("function", value):
            default = template("function")["parameters"][value]["default"]
            return "x" if default is None else str(default)
        return re.sub(r"\$\{[^}]*\}", "x", value)
    if isinstance(value, dict) and value.get("function", {}).get("type") == "string":
        return placeholder(next(iter(value["function"]["parameters"].values())))
    return "x"


class VaultWithEnvironmentFallback:
    """What the deployed app reads secrets from: the vault's secrets, else the app settings."""

    def __init__(self, vault_names: set[str], environ: dict[str, str]) -> None:
        self._vault_names = vault_names
        self._environ = environ

    def get(self, setting_name: str) -> str | None:
        if key_vault_secret_name(setting_name) in self._vault_names:
            return f"value-of-{key_vault_secret_name(setting_name)}"
        return self._environ.get(setting_name) or None


def test_every_setting_the_code_requires_is_set_by_bicep_or_held_in_key_vault() -> None:
    environ = {
        name: placeholder(value)
        for name, value in single("function", "Microsoft.Web/sites/config")["properties"].items()
    }
    vault_names = {
        body(resource)["name"]
        for _, resource in resources("keyvault", "Microsoft.KeyVault/vaults/secrets")
        if "condition" not in resource["config"]
    }
    # The check can fail: without the Bicep's settings the code names what it misses.
    with pytest.raises(ConfigurationError, match="WHATSAPP_PHONE_NUMBER_ID"):
        Settings.from_environment({}, secrets=VaultWithEnvironmentFallback(vault_names, {}))
    settings = Settings.from_environment(
        environ, secrets=VaultWithEnvironmentFallback(vault_names, environ)
    )
    assert settings.bus_backend == "azure"
    assert settings.database_entra_auth is True
    assert settings.inbound_queue_name == "x" and settings.outbound_queue_name == "x"
    assert (
        settings.database_pool_max_size
        == template("function")["parameters"]["databasePoolMaxSize"]["default"]
    )
