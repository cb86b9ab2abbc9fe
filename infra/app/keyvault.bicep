// Key Vault for the app's secrets. Access by Azure RBAC only (the app's identity holds Key Vault
// Secrets User, rbac.bicep); soft delete and purge protection keep a deleted secret recoverable.
// Secret names are the setting names lower-cased with dashes, as shared_code/secrets.py reads
// them (WHATSAPP_APP_SECRET -> whatsapp-app-secret).

param name string
param location string = resourceGroup().location
param tags object = {}

@secure()
param whatsappAccessToken string
@secure()
param whatsappAppSecret string
@secure()
param whatsappWebhookVerifyToken string
@description('Comma-separated bearer keys with full access to the management API.')
@secure()
param managementApiKeys string
@description('Comma-separated read-only management API keys (optional).')
@secure()
param managementApiReadKeys string = ''
@description('API key of the OpenAI-compatible agent (optional).')
@secure()
param openaiApiKey string = ''
@description('Shared secret of the external agent platform (optional).')
@secure()
param agentHttpSecret string = ''

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource whatsappAccessTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'whatsapp-access-token'
  properties: {
    value: whatsappAccessToken
  }
}

resource whatsappAppSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'whatsapp-app-secret'
  properties: {
    value: whatsappAppSecret
  }
}

resource whatsappWebhookVerifyTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'whatsapp-webhook-verify-token'
  properties: {
    value: whatsappWebhookVerifyToken
  }
}

resource managementApiKeysSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'management-api-keys'
  properties: {
    value: managementApiKeys
  }
}

// Optional secrets are created only when given: an empty secret would shadow nothing useful,
// and the app treats an absent one as "not configured".
resource managementApiReadKeysSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(managementApiReadKeys)) {
  parent: vault
  name: 'management-api-read-keys'
  properties: {
    value: managementApiReadKeys
  }
}

resource openaiApiKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(openaiApiKey)) {
  parent: vault
  name: 'openai-api-key'
  properties: {
    value: openaiApiKey
  }
}

resource agentHttpSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(agentHttpSecret)) {
  parent: vault
  name: 'agent-http-secret'
  properties: {
    value: agentHttpSecret
  }
}

output name string = vault.name
output id string = vault.id
output uri string = vault.properties.vaultUri
