// The Flex Consumption function app (Linux, Python 3.11) and its plan. Every connection is
// identity-based through the one user-assigned identity: no key or connection string is set.
// The settings below are the ones shared_code/config.py reads (plus the Functions host's own);
// secrets are not settings, they come from Key Vault (KEY_VAULT_URL). tests/infra checks both.

param name string
param planName string
param location string = resourceGroup().location
param tags object = {}

param identityId string
param identityClientId string
param identityName string

param storageAccountName string
param deploymentContainerName string
param applicationInsightsName string
param keyVaultUri string
param serviceBusFullyQualifiedNamespace string
param inboundQueueName string
param outboundQueueName string
param postgresHost string
param postgresDatabaseName string

@description('Memory of each instance (MB).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Most instances the app scales out to, all functions together; PostgreSQL max_connections is sized from it.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Connections per worker pool (DATABASE_POOL_MAX_SIZE).')
@minValue(2)
param databasePoolMaxSize int = 4

param whatsappPhoneNumberId string
param whatsappBusinessAccountId string = ''

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  // azd finds the app to deploy to by this tag (service "api" in azure.yaml).
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }

  resource appSettings 'config' = {
    name: 'appsettings'
    properties: {
      // The Functions host's storage, by identity.
      AzureWebJobsStorage__accountName: storage.name
      AzureWebJobsStorage__credential: 'managedidentity'
      AzureWebJobsStorage__clientId: identityClientId
      // Application Insights with Entra ingestion (the component has local auth disabled, so
      // the connection string carries no usable key).
      APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
      APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
      // Service Bus triggers (connection="ServiceBusConnection") and the app's publisher.
      ServiceBusConnection__fullyQualifiedNamespace: serviceBusFullyQualifiedNamespace
      ServiceBusConnection__credential: 'managedidentity'
      ServiceBusConnection__clientId: identityClientId
      // azure-identity picks the user-assigned identity by this (Key Vault, PostgreSQL tokens).
      AZURE_CLIENT_ID: identityClientId
      KEY_VAULT_URL: keyVaultUri
      BUS_BACKEND: 'azure'
      INBOUND_QUEUE_NAME: inboundQueueName
      OUTBOUND_QUEUE_NAME: outboundQueueName
      WHATSAPP_PHONE_NUMBER_ID: whatsappPhoneNumberId
      WHATSAPP_BUSINESS_ACCOUNT_ID: whatsappBusinessAccountId
      // No password: each connection's password is an Entra access token of the identity.
      DATABASE_ENTRA_AUTH: 'true'
      DATABASE_URL: 'postgresql://${identityName}@${postgresHost}:5432/${postgresDatabaseName}?sslmode=require'
      DATABASE_POOL_MAX_SIZE: string(databasePoolMaxSize)
    }
  }
}

output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
