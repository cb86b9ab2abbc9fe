// Entry point for `azd up`: one resource group holding the WhatsApp bridge on a Flex Consumption
// function app, Service Bus, PostgreSQL, Key Vault, storage and monitoring, all reached with one
// user-assigned managed identity. Plain resources in infra/app/*.bicep (no registry modules) so
// tests/infra can read every property offline.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; seeds the unique suffix of every resource name.')
param environmentName string

@minLength(1)
@description('Region of every resource; it must offer Flex Consumption (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Name of the resource group (default: rg-<environmentName>).')
param resourceGroupName string = ''

// ---- WhatsApp Business account (not secret) ----
@description('Phone number id of the business number (Meta app dashboard, WhatsApp > API Setup).')
param whatsappPhoneNumberId string
@description('WhatsApp Business Account id: needed for the template catalogue (optional).')
param whatsappBusinessAccountId string = ''

// ---- Secrets: written to Key Vault only, never to app settings or outputs ----
@secure()
@description('System-user access token of the Graph API.')
param whatsappAccessToken string
@secure()
@description('App secret: verifies X-Hub-Signature-256 on webhooks.')
param whatsappAppSecret string
@secure()
@description('The verify token you type into Meta\'s webhook configuration.')
param whatsappWebhookVerifyToken string
@secure()
@description('Comma-separated management API keys (full access).')
param managementApiKeys string
@secure()
@description('Comma-separated read-only management API keys (optional).')
param managementApiReadKeys string = ''
@secure()
@description('API key of the OpenAI-compatible agent (optional).')
param openaiApiKey string = ''
@secure()
@description('Shared secret of the external agent platform (optional).')
param agentHttpSecret string = ''

// ---- Scale: PostgreSQL max_connections is sized from these two ----
@description('Memory of each function instance (MB).')
@allowed([
  512
  2048
  4096
])
param functionInstanceMemoryMB int = 2048
@description('Most instances the function app scales out to (all functions together).')
@minValue(1)
@maxValue(1000)
param functionMaximumInstanceCount int = 40
@description('Connections per worker pool (DATABASE_POOL_MAX_SIZE).')
@minValue(2)
param databasePoolMaxSize int = 4

@description('Deliveries of a queue message before Service Bus dead-letters it.')
@minValue(1)
@maxValue(2000)
param serviceBusMaxDeliveryCount int = 10

@description('PostgreSQL compute SKU; its default max_connections must exceed the computed figure (infra/README.md).')
param postgresSkuName string = 'Standard_B2s'
@allowed([
  'Burstable'
  'GeneralPurpose'
  'MemoryOptimized'
])
param postgresSkuTier string = 'Burstable'

@description('E-mail address that receives alerts (optional).')
param alertEmailAddress string = ''

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-api-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'
var inboundQueueName = 'inbound-events'
var outboundQueueName = 'outbound-messages'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity './app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-api-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring './app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage './app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
  }
}

module serviceBus './app/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    name: 'sb-${resourceToken}'
    location: location
    tags: tags
    inboundQueueName: inboundQueueName
    outboundQueueName: outboundQueueName
    maxDeliveryCount: serviceBusMaxDeliveryCount
  }
}

module keyVault './app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
    whatsappAccessToken: whatsappAccessToken
    whatsappAppSecret: whatsappAppSecret
    whatsappWebhookVerifyToken: whatsappWebhookVerifyToken
    managementApiKeys: managementApiKeys
    managementApiReadKeys: managementApiReadKeys
    openaiApiKey: openaiApiKey
    agentHttpSecret: agentHttpSecret
  }
}

module postgres './app/postgres.bicep' = {
  name: 'postgres'
  scope: rg
  params: {
    name: 'psql-${resourceToken}'
    location: location
    tags: tags
    skuName: postgresSkuName
    skuTier: postgresSkuTier
    administratorIdentityName: identity.outputs.name
    administratorIdentityPrincipalId: identity.outputs.principalId
    functionMaximumInstanceCount: functionMaximumInstanceCount
    databasePoolMaxSize: databasePoolMaxSize
  }
}

module rbac './app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    serviceBusNamespaceName: serviceBus.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module functionApp './app/function.bicep' = {
  name: 'function'
  scope: rg
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    identityName: identity.outputs.name
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultUri: keyVault.outputs.uri
    serviceBusFullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
    inboundQueueName: serviceBus.outputs.inboundQueueName
    outboundQueueName: serviceBus.outputs.outboundQueueName
    postgresHost: postgres.outputs.host
    postgresDatabaseName: postgres.outputs.databaseName
    instanceMemoryMB: functionInstanceMemoryMB
    maximumInstanceCount: functionMaximumInstanceCount
    databasePoolMaxSize: databasePoolMaxSize
    whatsappPhoneNumberId: whatsappPhoneNumberId
    whatsappBusinessAccountId: whatsappBusinessAccountId
  }
  // The app starts (and reads Key Vault, Service Bus, storage) as soon as it exists: its roles first.
  dependsOn: [
    rbac
  ]
}

module alerts './app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    namePrefix: 'wa-${resourceToken}'
    location: location
    tags: tags
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    serviceBusNamespaceName: serviceBus.outputs.name
    queueNames: [
      inboundQueueName
      outboundQueueName
    ]
    alertEmailAddress: alertEmailAddress
  }
}

// Outputs for azd (UPPER_SNAKE, stored in .azure/<env>/.env) and for the operator. No secret.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = functionApp.outputs.name
output SERVICE_API_NAME string = functionApp.outputs.name
output WHATSAPP_WEBHOOK_CALLBACK_URL string = 'https://${functionApp.outputs.defaultHostName}/api/v1/whatsapp/webhook'
output MANAGEMENT_API_BASE_URL string = 'https://${functionApp.outputs.defaultHostName}/api/v1/whatsapp'
output AZURE_MANAGED_IDENTITY_NAME string = identity.outputs.name
output AZURE_MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output SERVICE_BUS_NAMESPACE string = serviceBus.outputs.name
output SERVICE_BUS_FULLY_QUALIFIED_NAMESPACE string = serviceBus.outputs.fullyQualifiedNamespace
output KEY_VAULT_NAME string = keyVault.outputs.name
output KEY_VAULT_URL string = keyVault.outputs.uri
output POSTGRES_SERVER_NAME string = postgres.outputs.name
output POSTGRES_HOST string = postgres.outputs.host
output POSTGRES_DATABASE string = postgres.outputs.databaseName
output POSTGRES_MAX_CONNECTIONS int = postgres.outputs.maxConnections
output STORAGE_ACCOUNT_NAME string = storage.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output LOG_ANALYTICS_NAME string = monitoring.outputs.logAnalyticsName
