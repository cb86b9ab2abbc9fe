// PostgreSQL Flexible Server with Microsoft Entra authentication only: password auth is
// disabled, and the app's user-assigned identity is the Entra administrator, so the app signs
// in as that identity with an access token (no password exists anywhere). The Postgres role
// name of the identity is its resource name: DATABASE_URL's user.

param name string
param location string = resourceGroup().location
param tags object = {}
param databaseName string = 'whatsapp_bridge'

@description('PostgreSQL major version.')
@allowed([
  '15'
  '16'
])
param version string = '16'

@description('Compute SKU; its default max_connections must hold the figure below (B2s: 429, D2ds_v5: 859).')
param skuName string = 'Standard_B2s'
@allowed([
  'Burstable'
  'GeneralPurpose'
  'MemoryOptimized'
])
param skuTier string = 'Burstable'
param storageSizeGB int = 32

param administratorIdentityName string
param administratorIdentityPrincipalId string

@description('The function app\'s maximum instance count (functionAppConfig.scaleAndConcurrency).')
param functionMaximumInstanceCount int
@description('DATABASE_POOL_MAX_SIZE: connections per worker pool.')
param databasePoolMaxSize int

// max_connections sized against the instance cap:
//   instances x worker processes per instance x (pool max size x pools per worker + migration connection)
//   + connections Azure reserves + a margin for operators (psql, the portal's query editor)
// One Python worker process per Flex instance (FUNCTIONS_WORKER_PROCESS_COUNT is not set), one
// pool per worker on Azure (shared_code/runtime.py; the local bus's second pool is dev-host only),
// and each worker holds one more connection while it applies migrations at start.
// Defaults: 40 x 1 x (4 x 1 + 1) + 15 + 10 = 225, under B2s's 429.
var workerProcessesPerInstance = 1
var poolsPerWorker = 1
var migrationConnectionsPerWorker = 1
var azureReservedConnections = 15
var operatorConnections = 10
// Fully parenthesized: pycep-parser (tests/infra) reads * and + without precedence.
var connectionsPerWorker = (databasePoolMaxSize * poolsPerWorker) + migrationConnectionsPerWorker
var appConnections = functionMaximumInstanceCount * (workerProcessesPerInstance * connectionsPerWorker)
var maxConnections = appConnections + (azureReservedConnections + operatorConnections)

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: skuName
    tier: skuTier
  }
  properties: {
    version: version
    storage: {
      storageSizeGB: storageSizeGB
      autoGrow: 'Enabled'
    }
    backup: {
      backupRetentionDays: 7
      geoRedundantBackup: 'Disabled'
    }
    highAvailability: {
      mode: 'Disabled'
    }
    network: {
      publicNetworkAccess: 'Enabled'
    }
    authConfig: {
      activeDirectoryAuth: 'Enabled'
      passwordAuth: 'Disabled'
      tenantId: subscription().tenantId
    }
  }
}

// The server accepts one change at a time, so the children below are chained with dependsOn.
resource administrator 'Microsoft.DBforPostgreSQL/flexibleServers/administrators@2024-08-01' = {
  parent: server
  name: administratorIdentityPrincipalId
  properties: {
    principalName: administratorIdentityName
    principalType: 'ServicePrincipal'
    tenantId: subscription().tenantId
  }
}

// 0.0.0.0-0.0.0.0 is Azure's "allow Azure services" rule: Flex Consumption instances have no
// fixed outbound addresses without a virtual network.
resource allowAzureServices 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2024-08-01' = {
  parent: server
  name: 'AllowAllAzureServicesAndResourcesWithinAzureIps'
  properties: {
    startIpAddress: '0.0.0.0'
    endIpAddress: '0.0.0.0'
  }
  dependsOn: [
    administrator
  ]
}

// Static parameter: takes effect after the server restarts (see infra/README.md).
resource maxConnectionsSetting 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: server
  name: 'max_connections'
  properties: {
    value: string(maxConnections)
    source: 'user-override'
  }
  dependsOn: [
    allowAzureServices
  ]
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = {
  parent: server
  name: databaseName
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
  dependsOn: [
    maxConnectionsSetting
  ]
}

output name string = server.name
output host string = server.properties.fullyQualifiedDomainName
output databaseName string = database.name
output maxConnections int = maxConnections
