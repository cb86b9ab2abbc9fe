// The one user-assigned identity the function app uses for everything: Service Bus, storage,
// Key Vault, PostgreSQL (as its Entra administrator) and Application Insights ingestion.
// User-assigned rather than system-assigned so role assignments and the PostgreSQL
// administrator can be created before the function app exists, in one deployment.

param name string
param location string = resourceGroup().location
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
